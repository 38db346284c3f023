"""CPU-checkable pieces of the GPU path: schedule vs megatron's param groups, optimizer-state copies
for background saves, RoPE that follows the model's device, and config guards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import tiny_overrides


def test_schedule_overrides_param_groups_own_max_lr() -> None:
    """megatron's optimizer puts max_lr/min_lr (from its config's placeholders) into every group,
    and its scheduler prefers them to its own arguments: the run's schedule must win."""
    from trainer.schedule import ScheduleSpec, build_scheduler

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p], "max_lr": 0.0, "min_lr": None, "wd_mult": 1.0}], lr=0.0)
    sched = build_scheduler(opt, ScheduleSpec("wsd", 1e-3, 1e-4, 2, 10, 4, "linear"))
    lrs = []
    for _ in range(10):
        sched.step(1)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(5e-4) and lrs[1:6] == pytest.approx([1e-3] * 5)
    assert lrs[-1] == pytest.approx(1e-4)


def test_optimizer_state_copy_is_detached_from_live_tensors() -> None:
    from trainer.engine import _to_cpu, chained

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    copy = _to_cpu({"optimizer": opt.state_dict(), "main": [[p.data]], "n": 1})
    p.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(copy["main"][0][0], p.data)
    assert not torch.equal(copy["optimizer"]["state"][0]["exp_avg"], opt.state[p]["exp_avg"])
    assert copy["n"] == 1 and isinstance(copy["main"], list)
    assert chained(opt) == [opt]


def test_cpu_built_rope_follows_the_model() -> None:
    from tests.trainer.sft.conftest import micro_model

    model = micro_model(seq_length=16)
    rope = model.rotary_pos_emb
    assert "rotary_pos_emb.inv_freq" in dict(model.named_buffers())
    assert not any("inv_freq" in k for k in model.state_dict())  # not persistent: checkpoints unchanged
    tokens = torch.randint(0, 128, (1, 16))
    pos = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        before = model(tokens, pos, None)
        model.to(torch.float64)  # any _apply: inv_freq stays float32 and the forward cache is dropped
        assert rope.inv_freq.dtype == torch.float32
        model.to(torch.float32)
        torch.testing.assert_close(model(tokens, pos, None), before)


def test_distributed_optimizer_is_refused_on_cpu(data_cache: Path, local_store: Any) -> None:
    from trainer.config import load_config
    from trainer.loop import Trainer

    cfg = load_config(None, tiny_overrides(data_cache, **{"parallel.distributed_optimizer": True}))
    with pytest.raises(ValueError, match="distributed_optimizer"):
        Trainer(cfg, store=local_store)
