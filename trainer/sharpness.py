"""Sharpness as the Hessian trace, by Hutchinson's estimator (WSO paper, Appendix H).

``tr(H) = E[vᵀ H v]`` for Rademacher ``v`` (entries ±1 with equal probability). Each ``vᵀ H v`` needs
one Hessian-vector product, computed by double backward: the gradient is taken once per batch with
``create_graph=True`` and then differentiated against each ``v`` (reusing that graph), so ``samples``
estimates cost one forward plus ``samples`` second-order backward passes. The estimate is reported
with its standard error ``std / sqrt(n)`` over all ``(batch, vector)`` samples.

Two pieces of the training path have no double backward and are avoided here: PyTorch's fused CPU
flash attention (we force SDPA's math kernel, which is plain differentiable ops), and megatron's
fused vocab-parallel cross-entropy (we take the logits and use ``F.cross_entropy``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from wsm.eval_config import SharpnessConfig

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TraceEstimate:
    """Mean of the per-sample estimates and its standard error."""

    mean: float
    stderr: float
    n: int

    @classmethod
    def from_samples(cls, values: Sequence[float]) -> TraceEstimate:
        n = len(values)
        if n < 2:
            raise ValueError("a standard error needs at least two Hutchinson samples")
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1)
        return cls(mean, math.sqrt(var / n), n)


def rademacher_like(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """±1 entries drawn on the CPU (same vectors on every device), moved to ``p``'s device and dtype."""
    v = torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
    return v.to(device=p.device, dtype=p.dtype)


def hutchinson_samples(
    loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], samples: int, gen: torch.Generator
) -> list[float]:
    """``samples`` values of ``vᵀ H v`` for the Hessian of ``loss_fn()`` with respect to ``params``."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, list(params), create_graph=True)
    out = []
    for i in range(samples):
        vs = [rademacher_like(p, gen) for p in params]
        hvs = torch.autograd.grad(grads, list(params), grad_outputs=vs, retain_graph=i < samples - 1)
        out.append(float(sum((h.double() * v.double()).sum() for h, v in zip(hvs, vs, strict=True))))
    return out


def lm_loss(model: torch.nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    """Masked next-token cross-entropy from the logits (twice differentiable, unlike megatron's fused loss)."""
    tokens = batch["tokens"].to(device)
    logits = model(tokens, batch["position_ids"].to(device), None)
    per_token = F.cross_entropy(
        logits.float().flatten(0, 1), batch["labels"].to(device).flatten(), reduction="none"
    )
    mask = batch["loss_mask"].to(device).flatten().float()
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def model_sharpness(
    model: torch.nn.Module, data: Sequence[Batch], cfg: SharpnessConfig, device: torch.device
) -> TraceEstimate:
    """Hessian trace of the mean loss per batch, over up to ``cfg.batches`` batches of ``data``."""
    if not data:
        raise ValueError("no held-out batches to measure sharpness on")
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(cfg.seed)
    values: list[float] = []
    # The math kernel: the fused CPU attention kernel has no double backward.
    with sdpa_kernel(SDPBackend.MATH):
        for batch in list(data)[: cfg.batches]:
            values += hutchinson_samples(
                functools.partial(lm_loss, model, batch, device), params, cfg.samples, gen
            )
    for p in params:
        p.grad = None
    est = TraceEstimate.from_samples(values)
    log.info("sharpness: tr(H) = %.4g ± %.2g (%d samples)", est.mean, est.stderr, est.n)
    return est
