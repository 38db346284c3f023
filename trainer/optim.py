"""AdamW with no weight decay on norms and biases, gradient clipping that is correct under TP.

CPU: ``torch.optim.AdamW`` plus our own clipping, because megatron's optimizer and grad-norm code
allocate on CUDA. The global norm sums squared norms of TP-sharded parameters over the TP group
and counts replicated parameters (norms) once; DP needs no reduction (DDP already averaged).
GPU: megatron's optimizer (fp32 main params for bf16, optional distributed optimizer), which
clips internally.

Per-group ``wd_mult`` is what megatron's scheduler multiplies into ``weight_decay`` on every step,
so groups without decay keep 0 whatever the schedule does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from trainer.config import OptimConfig
from trainer.weights import canonical_name, unwrap


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Norm weights and biases (all 1-D tensors) are not decayed."""
    return param.ndim < 2 or name.endswith(".bias")


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Two groups, decayed matrices first; each param keeps its canonical name for checkpoints."""
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        (plain if no_decay(name, p) else decay).append(p)
        p.wsm_name = canonical_name(name)  # type: ignore[attr-defined]
    return [
        {
            "params": decay,
            "weight_decay": cfg.weight_decay,
            "wd_mult": 1.0,
            "base_weight_decay": cfg.weight_decay,
        },
        {"params": plain, "weight_decay": 0.0, "wd_mult": 0.0, "base_weight_decay": cfg.weight_decay},
    ]


def build_adamw(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Plain AdamW (CPU path); LR is set by the scheduler before every step."""
    return torch.optim.AdamW(
        param_groups(model, cfg), lr=0.0, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True
    )


def grad_norm(
    model: torch.nn.Module, tp_group: dist.ProcessGroup | None, tp_rank: int, tp_size: int
) -> torch.Tensor:
    """Global L2 norm of the gradients of the full (unsharded) model (a CPU scalar).

    The squares are summed where the gradients live and copied to the CPU once (per-parameter
    copies would synchronise a GPU once per parameter, as SFT on CUDA does every step).
    """
    sharded: list[torch.Tensor] = []
    replicated: list[torch.Tensor] = []
    for p in unwrap(model).parameters():
        if p.grad is None:
            continue
        sq = p.grad.detach().float().pow(2).sum()
        (sharded if tp_size > 1 and getattr(p, "tensor_model_parallel", False) else replicated).append(sq)

    def total(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts).sum().cpu() if parts else torch.zeros((), dtype=torch.float32)

    sharded_sq, replicated_sq = total(sharded), total(replicated)
    if tp_size > 1:
        dist.all_reduce(sharded_sq, group=tp_group)
    return (sharded_sq + replicated_sq).sqrt()


def clip_gradients(model: torch.nn.Module, max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale gradients so the global norm is at most ``max_norm`` (no-op when 0 or already below)."""
    if max_norm <= 0 or not math.isfinite(float(total_norm)):
        return
    coef = max_norm / (float(total_norm) + 1e-6)
    if coef < 1.0:
        grads = [p.grad for p in unwrap(model).parameters() if p.grad is not None]
        torch._foreach_mul_(grads, coef)


def build_megatron_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, *, bf16: bool, distributed: bool
) -> Any:
    """GPU path: megatron's (distributed) Adam with fp32 main params; clips inside ``step()``."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(
        optimizer="adam",
        # Placeholders: megatron copies them into every param group as max_lr/min_lr, and
        # trainer.schedule.build_scheduler overwrites those with the run's schedule.
        lr=0.0,
        min_lr=0.0,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.beta1,
        adam_beta2=cfg.beta2,
        adam_eps=cfg.eps,
        clip_grad=cfg.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=distributed,
    )
    # Default overrides: no weight decay on biases and 1-D parameters, as on CPU. The Gloo twins
    # of the DP groups (trainer.distributed creates them on CUDA) carry the distributed
    # optimizer's state to and from DP rank 0 for checkpoints.
    return get_megatron_optimizer(config, [model], use_gloo_process_groups=True)
