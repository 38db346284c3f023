"""Learning-rate schedules through megatron's ``OptimizerParamScheduler``, in optimizer steps.

Convention: the scheduler's ``num_steps`` equals the number of optimizer steps taken *including*
the one about to run, so it is advanced *before* each ``optimizer.step()``. That avoids the
constructor's ``step(0)`` leaving LR = init_lr = 0 for the first update, and makes the LR of
step k a pure function of k (resume sets ``num_steps`` directly rather than through
``load_state_dict``, which would add to the current count and cannot carry the WSD fields).

Styles: ``wso`` -> megatron ``constant`` (warmup, then max LR forever); ``wsd`` -> ``WSD`` with
``lr_wsd_decay_style`` in linear/cosine/minus_sqrt/exponential; ``cosine``/``linear`` decay from the
end of warmup to the last step. Every decay ends at ``min_lr_factor × lr``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from trainer.config import MEGATRON_CURVES, TrainConfig
from trainer.units import tokens_to_steps

# megatron asserts lr_decay_steps > warmup even for "constant"; a horizon no run reaches.
_FOREVER = 2**62


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule resolved to steps: what the scheduler is built from and what the manifest records."""

    style: str
    max_lr: float
    min_lr: float
    warmup_steps: int
    decay_end_step: int | None = None
    wsd_decay_steps: int | None = None
    curve: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_schedule(cfg: TrainConfig) -> ScheduleSpec:
    """Turn the token-based schedule config into steps."""
    tps = cfg.tokens_per_step
    s = cfg.schedule
    warmup = tokens_to_steps(s.warmup, tps) if s.warmup else 0
    min_lr = cfg.optim.lr * s.min_lr_factor
    if s.style == "wso":
        return ScheduleSpec("wso", cfg.optim.lr, cfg.optim.lr, warmup)
    assert cfg.train_tokens is not None  # enforced by TrainConfig
    total = tokens_to_steps(cfg.train_tokens, tps)
    if total <= warmup:
        raise ValueError(f"train_tokens ({total} steps) must be longer than schedule.warmup ({warmup} steps)")
    if s.style == "wsd":
        decay = tokens_to_steps(s.decay, tps) if s.decay else max(1, round(0.2 * total))
        if decay > total - warmup:
            raise ValueError(f"schedule.decay ({decay} steps) is longer than training after warmup")
        return ScheduleSpec("wsd", cfg.optim.lr, min_lr, warmup, total, decay, s.decay_curve)
    return ScheduleSpec(s.style, cfg.optim.lr, min_lr, warmup, total)


def decay_branch_schedule(
    base: ScheduleSpec, *, fork_step: int, window_steps: int, curve: str, min_lr_factor: float
) -> ScheduleSpec:
    """WSD that matches ``base`` up to ``fork_step`` and decays over the next ``window_steps``."""
    if curve not in MEGATRON_CURVES:
        raise ValueError(f"unknown decay curve {curve!r}; choose one of {', '.join(MEGATRON_CURVES)}")
    if fork_step < base.warmup_steps:
        raise ValueError(
            f"the branch must start after warmup (step {base.warmup_steps}), not at step {fork_step}"
        )
    return ScheduleSpec(
        "wsd",
        base.max_lr,
        base.max_lr * min_lr_factor,
        base.warmup_steps,
        fork_step + window_steps,
        window_steps,
        curve,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: ScheduleSpec, *, steps_done: int = 0
) -> OptimizerParamScheduler:
    """megatron's scheduler for ``spec``, positioned after ``steps_done`` optimizer steps."""
    style = {"wso": "constant", "wsd": "WSD", "cosine": "cosine", "linear": "linear"}[spec.style]
    decay_end = spec.decay_end_step if spec.decay_end_step is not None else _FOREVER
    for group in optimizer.param_groups:
        # megatron's scheduler prefers a group's own max_lr/min_lr to its arguments, and megatron's
        # optimizer fills them from its OptimizerConfig (placeholders there): the spec decides.
        group["max_lr"] = spec.max_lr
        group["min_lr"] = spec.min_lr
    sched = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=spec.max_lr,
        min_lr=spec.min_lr,
        lr_warmup_steps=spec.warmup_steps,
        lr_decay_steps=max(decay_end, spec.warmup_steps + 1),
        lr_decay_style=style,
        # Weight decay is constant; step() multiplies it by each group's wd_mult.
        start_wd=_group_wd(optimizer),
        end_wd=_group_wd(optimizer),
        wd_incr_steps=1,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
        wsd_decay_steps=spec.wsd_decay_steps,
        lr_wsd_decay_style=MEGATRON_CURVES[spec.curve] if spec.curve else None,
    )
    sched.num_steps = steps_done
    sched.step(0)
    return sched


def _group_wd(optimizer: torch.optim.Optimizer) -> float:
    return max(float(g.get("base_weight_decay", g.get("weight_decay", 0.0))) for g in optimizer.param_groups)


def lr_at(spec: ScheduleSpec, step: int) -> float:
    """The LR of optimizer step ``step`` (1-based) without an optimizer, for checks and plots."""
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    return float(build_scheduler(dummy, spec, steps_done=step).optimizer.param_groups[0]["lr"])
