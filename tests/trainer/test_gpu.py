"""GPU path (megatron DDP + optimizer, bf16): runs only where CUDA is available.

Covers what the CPU suite cannot: bf16 parameters with fp32 main params, megatron's DDP and its
(distributed) optimizer, the schedule reaching megatron's param groups, exact-enough resume of
the megatron optimizer state (both optimizers), torchrun with one rank, and a CPU process group
left by earlier tests being replaced by an NCCL one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import tiny_overrides, torchrun_train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _cfg(cache: Path, run: str, **extra: Any) -> Any:
    from trainer.config import load_config

    return load_config(None, tiny_overrides(cache, run=run, device="cuda", **extra))


def test_gpu_training_writes_loadable_checkpoints(data_cache: Path, local_store: Any) -> None:
    from trainer.engine import GPUEngine
    from trainer.load import build_stored_model, load_run_model, resolve
    from trainer.loop import Trainer

    trainer = Trainer(_cfg(data_cache, "gpu", train_tokens=10240), store=local_store)
    assert isinstance(trainer.engine, GPUEngine) and trainer.bf16
    assert not trainer.engine.distributed  # one rank: megatron's plain mixed-precision optimizer
    assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in trainer.model.parameters())
    result = trainer.train()
    # The schedule reaches megatron's param groups (they carry their own max_lr, once left at 0).
    warmup = 4  # 1k tokens at 256 tokens/step
    assert result.lrs[0] == pytest.approx(3e-3 / warmup)
    assert result.lrs[warmup - 1 :] == pytest.approx([3e-3] * (40 - warmup + 1))
    assert result.losses[-1] < result.losses[0] - 0.5, result.losses
    assert [c.tokens for c in local_store.list_checkpoints("gpu")] == [2560, 5120, 7680, 10240]
    last = local_store.latest_checkpoint("gpu")
    names = {f.name for f in last.files}  # Megatron's torch_dist layout, optimizer state included
    assert {"latest_checkpointed_iteration.txt", "iter_0000040/.metadata", "train_state.json"} <= names
    cpu_model = load_run_model(local_store, "gpu")  # bf16 weights load into a CPU fp32 model
    assert next(cpu_model.parameters()).dtype == torch.float32
    tokens = torch.randint(0, 500, (2, 64))
    pos = torch.arange(64).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        want = cpu_model(tokens, pos, None)
    # The CPU-built evaluation model moved to CUDA (RoPE included) computes the same logits.
    on_gpu = build_stored_model(local_store, resolve(local_store, "gpu", last.dir), torch.device("cuda"))
    with torch.no_grad():
        got = on_gpu(tokens.cuda(), pos.cuda(), None).cpu()
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)


def _weights(store: Any, run: str, tokens: int) -> dict[str, torch.Tensor]:
    from trainer.checkpoint import load_checkpoint

    return load_checkpoint(store, store.get_checkpoint(run, tokens), with_state=False).weights


@pytest.mark.parametrize("distributed", [False, True], ids=["megatron-optimizer", "distributed-optimizer"])
def test_gpu_resume_continues_the_uninterrupted_run(
    data_cache: Path, tmp_path: Path, distributed: bool
) -> None:
    """Stop at a checkpoint, resume, and land where one uninterrupted run lands.

    Compared on the updates after the checkpoint: lost Adam moments or a wrong Adam step count
    (megatron's distributed optimizer shares one step tensor between all parameters on load,
    without TE/apex) change them by tens of percent; kernel non-determinism by far under 1%.
    """
    from trainer.loop import Trainer
    from wsm.store import Store

    extra = {"parallel.distributed_optimizer": distributed}
    full_store, part_store = Store(str(tmp_path / "full")), Store(str(tmp_path / "part"))
    full = Trainer(_cfg(data_cache, "r", train_tokens=5120, **extra), store=full_store)
    assert full.engine.distributed is distributed  # type: ignore[union-attr]
    full.train()
    Trainer(_cfg(data_cache, "r", train_tokens=2560, **extra), store=part_store).train()
    resumed = Trainer(_cfg(data_cache, "r", train_tokens=5120, **extra), store=part_store)
    assert resumed.step == 10
    resumed.train()

    start = _weights(full_store, "r", 2560)
    assert all(torch.equal(start[k], v) for k, v in _weights(part_store, "r", 2560).items())
    a, b = _weights(full_store, "r", 5120), _weights(part_store, "r", 5120)
    diff = sum(float((a[k].float() - b[k].float()).norm() ** 2) for k in a) ** 0.5
    update = sum(float((a[k].float() - start[k].float()).norm() ** 2) for k in a) ** 0.5
    assert diff / update < 0.02, (diff, update)


def test_gpu_legacy_layout_refuses_the_other_optimizer(data_cache: Path, local_store: Any) -> None:
    """The legacy safetensors layout keeps megatron's per-rank optimizer state: same optimizer only."""
    from trainer.loop import Trainer

    legacy = {"checkpoint.format": "safetensors"}
    Trainer(_cfg(data_cache, "x", train_tokens=2560, **legacy), store=local_store).train()
    assert "train_state.pt" in {f.name for f in local_store.latest_checkpoint("x").files}
    with pytest.raises(ValueError, match="distributed optimizer"):
        Trainer(
            _cfg(data_cache, "x", train_tokens=5120, **legacy, **{"parallel.distributed_optimizer": True}),
            store=local_store,
        )


def test_gpu_checkpoint_does_not_resume_on_cpu(data_cache: Path, local_store: Any) -> None:
    from trainer.loop import Trainer

    Trainer(_cfg(data_cache, "y", train_tokens=2560), store=local_store).train()
    with pytest.raises(ValueError, match="GPU engine's optimizer state"):
        Trainer(load_cpu_config(data_cache, "y", train_tokens=5120), store=local_store)


@pytest.mark.slow
def test_gpu_torchrun_one_rank_with_the_distributed_optimizer(data_cache: Path, tmp_path: Path) -> None:
    from trainer.load import load_run_model
    from wsm.store import Store

    store_dir = tmp_path / "store"
    overrides = tiny_overrides(
        data_cache, run="tr", device="cuda", **{"parallel.distributed_optimizer": True}
    )
    for tokens in (2560, 5120):  # the second start resumes from the first one's checkpoint
        proc = torchrun_train(1, [*overrides, f"train_tokens={tokens}", f"store={store_dir}"])
    out = proc.stdout + proc.stderr
    assert "resumed from" in out and "distributed optimizer" in out, out[-3000:]
    store = Store(str(store_dir))
    assert [c.tokens for c in store.list_checkpoints("tr")] == [2560, 5120]
    load_run_model(store, "tr")


def test_cpu_training_after_gpu_training_in_one_process(data_cache: Path, local_store: Any) -> None:
    """The one-rank group follows the device asked for (NCCL takes no CPU tensors, and back)."""
    import torch.distributed as dist

    from trainer.loop import Trainer

    Trainer(_cfg(data_cache, "g", train_tokens=512), store=local_store).train()
    assert dist.get_backend() == "nccl"
    cpu = Trainer(
        load_cpu_config(data_cache, "c", train_tokens=512), store=local_store, save_checkpoints=False
    )
    assert dist.get_backend() == "gloo"
    assert cpu.train().step == 2
    Trainer(_cfg(data_cache, "g2", train_tokens=512), store=local_store).train()
    assert dist.get_backend() == "nccl"


def load_cpu_config(cache: Path, run: str, **extra: Any) -> Any:
    from trainer.config import load_config

    return load_config(None, tiny_overrides(cache, run=run, **extra))
