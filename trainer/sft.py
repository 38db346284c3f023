"""Supervised fine-tuning with the WSO paper's recipe (Appendix D) on the pre-training model code.

Defaults follow the paper: full-parameter AdamW, weight decay 0, cosine schedule with linear warmup
down to LR 0, gradient clipping at 1.0, one epoch, optionally an LR sweep keeping the best run by a
named metric. Batch size, warmup and precision are configurable (the paper's global batch of 128
and 100 warmup steps are sized for the Tulu-3 mixture, far larger than the built-in suite).

The LR schedule is megatron's ``OptimizerParamScheduler`` (via :mod:`trainer.schedule`) and the
optimizer the trainer's AdamW param groups, so SFT and pre-training share every piece that shapes
an update. Loss is the mean over answer tokens of the batch (see :mod:`trainer.sft_data`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from trainer.config import OptimConfig
from trainer.engine import token_loss
from trainer.optim import build_adamw, clip_gradients, grad_norm
from trainer.schedule import ScheduleSpec, build_scheduler
from trainer.sft_data import Example, batches
from wsm.eval_config import SFTConfig

log = logging.getLogger(__name__)


@dataclass
class SFTRun:
    """One fine-tuning run at one LR."""

    lr: float
    steps: int
    train_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def use_bf16(cfg: SFTConfig, device: torch.device) -> bool:
    """Whether to autocast to bf16; refused on CPU where megatron's backward fails with it."""
    if cfg.precision == "bf16" and device.type != "cuda":
        raise ValueError("sft.precision=bf16 needs CUDA (megatron's CPU backward fails under bf16 autocast)")
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[object]:
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def warmup_steps(cfg: SFTConfig, total: int) -> int:
    """Warmup length, always leaving at least one decay step (megatron requires decay > warmup)."""
    w = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_fraction * total)
    return max(0, min(w, total - 1))


def fine_tune(
    model: torch.nn.Module,
    train: Sequence[Example],
    cfg: SFTConfig,
    *,
    lr: float,
    pad_id: int,
    device: torch.device,
    progress: Callable[[float], None] | None = None,
) -> SFTRun:
    """Fine-tune ``model`` in place for ``cfg.epochs`` epochs at peak ``lr``."""
    if not train:
        raise ValueError("no SFT training records")
    bf16 = use_bf16(cfg, device)
    epochs = [batches(train, cfg.batch_size, pad_id, seed=cfg.seed + e) for e in range(cfg.epochs)]
    total = sum(len(e) for e in epochs)
    optim_cfg = OptimConfig(
        lr=lr, weight_decay=cfg.weight_decay, beta1=cfg.beta1, beta2=cfg.beta2, clip_grad=cfg.clip_grad
    )
    optimizer = build_adamw(model, optim_cfg)
    spec = ScheduleSpec("cosine", lr, cfg.min_lr, warmup_steps(cfg, total), total)
    scheduler = build_scheduler(optimizer, spec)
    run = SFTRun(lr=lr, steps=total)
    start = time.perf_counter()
    model.train()
    step = 0
    for epoch in epochs:
        for batch in epoch:
            # Advance first: the LR of step k is scheduler position k (see trainer.schedule).
            scheduler.step(1)
            with autocast(device, bf16):
                loss = token_loss(model, batch, device)
            loss.backward()  # type: ignore[no-untyped-call]
            clip_gradients(model, cfg.clip_grad, grad_norm(model, None, 0, 1))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"SFT loss became {value} at step {step + 1} (lr={lr:g}); lower the LR"
                )
            run.train_losses.append(value)
            step += 1
            if progress is not None:
                progress(step / total)
            if step % 20 == 0 or step == total:
                log.info("sft lr=%g step %d/%d loss %.4f", lr, step, total, value)
    run.seconds = time.perf_counter() - start
    model.eval()
    return run


@torch.no_grad()
def sft_loss(
    model: torch.nn.Module, examples: Sequence[Example], *, batch_size: int, pad_id: int, device: torch.device
) -> float:
    """Mean loss per answer token over ``examples`` (every token weighs the same)."""
    model.eval()
    total, count = 0.0, 0.0
    for batch in batches(examples, batch_size, pad_id, seed=None):
        n = float(batch["loss_mask"].sum())
        total += float(token_loss(model, batch, device)) * n
        count += n
    if not count:
        raise ValueError("held-out SFT records have no answer tokens")
    return total / count
