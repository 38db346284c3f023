"""DCP checkpoints through the merge engine: the seam end to end, against a float64 reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merger import execute_merge, plan_merge
from merger.errors import MergeError


def _load(step_dir: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What torch's own DCP loader gives for the model keys."""
    from torch.distributed.checkpoint import load

    state = {k: torch.empty_like(v) for k, v in like.items()}
    load(state, checkpoint_id=str(step_dir), no_dist=True)
    return state


def test_torchtitan_checkpoints_merge_like_the_reference(titan_root: Path, tmp_path: Path) -> None:
    a, b = titan_root / "step-100", titan_root / "step-200"
    weights = [0.3, 0.7]
    plan = plan_merge([a, b], weights)
    assert {ck.format for ck in plan.inputs} == {"dcp"}
    assert not any(
        n.startswith(("optimizer", "lr_scheduler", "dataloader", "train_state")) for n in plan._by_name()
    )
    execute_merge(plan, tmp_path / "out")
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    shapes = {name: torch.empty(t.shape, dtype=merged[name].dtype) for name, t in merged.items()}
    xa, xb = _load(a, shapes), _load(b, shapes)
    for name, got in merged.items():
        if got.is_floating_point():
            ref = (weights[0] * xa[name].double() + weights[1] * xb[name].double()).to(got.dtype)
            # float32 accumulation then one rounding: within one ulp of the float64 reference
            torch.testing.assert_close(
                got, ref, rtol=2**-7 if got.dtype == torch.bfloat16 else 1e-6, atol=1e-6
            )
        else:
            assert torch.equal(got, xa[name]), name  # non-float state is copied, never averaged


def test_formats_meet_at_the_seam(titan_root: Path, tmp_path: Path) -> None:
    """A DCP checkpoint and its safetensors copy are the same tensors: merging them changes nothing."""
    step = titan_root / "step-100"
    execute_merge(plan_merge([step], [1.0]), tmp_path / "st")
    plan = plan_merge([tmp_path / "st", step], [0.5, 0.5])
    assert [ck.format for ck in plan.inputs] == ["safetensors", "dcp"]
    execute_merge(plan, tmp_path / "both")
    both = load_file(str(tmp_path / "both" / "model.safetensors"))
    alone = load_file(str(tmp_path / "st" / "model.safetensors"))
    assert both.keys() == alone.keys() and all(torch.equal(both[k], alone[k]) for k in alone)


def test_unknown_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MergeError, match=r"empty: not a checkpoint in any known format \(safetensors, dcp\)"):
        plan_merge([tmp_path / "empty"], [1.0])
