"""LR schedules through megatron's scheduler: WSO stays constant; decays follow their curves."""

from __future__ import annotations

import math

import pytest

from trainer.config import load_config
from trainer.schedule import ScheduleSpec, decay_branch_schedule, lr_at, resolve_schedule

CURVES = {
    "linear": lambda x: 1 - x,
    "cosine": lambda x: 0.5 * (1 + math.cos(math.pi * x)),
    "1-sqrt": lambda x: 1 - math.sqrt(x),
}


def test_wso_warms_up_then_stays_constant_forever() -> None:
    spec = ScheduleSpec("wso", 1e-3, 1e-3, warmup_steps=10)
    assert lr_at(spec, 1) == pytest.approx(1e-4)  # never 0 on the first update
    assert lr_at(spec, 5) == pytest.approx(5e-4)
    assert [lr_at(spec, s) for s in (10, 11, 1000, 10**9)] == pytest.approx([1e-3] * 4)


def test_resolve_converts_tokens_to_steps() -> None:
    cfg = load_config(None, ["schedule.warmup=20k", "global_batch_size=8"])  # 2048 tokens/step
    assert resolve_schedule(cfg).warmup_steps == 10


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_wsd_decays_along_the_curve_to_the_floor(curve: str) -> None:
    cfg = load_config(
        None,
        [
            "schedule.style=wsd",
            "train_tokens=204800",
            "schedule.warmup=2048",
            "schedule.decay=40960",
            f"schedule.decay_curve={curve}",
            "schedule.min_lr_factor=0.1",
        ],
    )
    spec = resolve_schedule(cfg)
    assert (spec.warmup_steps, spec.decay_end_step, spec.wsd_decay_steps) == (1, 100, 20)
    peak, floor = 1e-3, 1e-4
    assert lr_at(spec, 80) == pytest.approx(peak)
    for i in (1, 5, 10, 20):
        assert lr_at(spec, 80 + i) == pytest.approx(floor + (peak - floor) * CURVES[curve](i / 20))


@pytest.mark.parametrize("style", ["cosine", "linear"])
def test_plain_decays(style: str) -> None:
    cfg = load_config(
        None, [f"schedule.style={style}", "train_tokens=22528", "schedule.warmup=2048", "global_batch_size=8"]
    )  # 11 steps, 1 warmup
    spec = resolve_schedule(cfg)
    f = CURVES["cosine" if style == "cosine" else "linear"]
    assert lr_at(spec, 6) == pytest.approx(1e-3 * f(0.5))
    assert lr_at(spec, 11) == pytest.approx(0.0, abs=1e-12)


def test_branch_schedule_matches_base_until_fork() -> None:
    base = ScheduleSpec("wso", 1e-3, 1e-3, warmup_steps=4)
    spec = decay_branch_schedule(base, fork_step=30, window_steps=10, curve="1-sqrt", min_lr_factor=0.0)
    assert [lr_at(spec, s) for s in range(1, 31)] == [lr_at(base, s) for s in range(1, 31)]
    assert lr_at(spec, 40) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="after warmup"):
        decay_branch_schedule(base, fork_step=2, window_steps=10, curve="linear", min_lr_factor=0.0)
