"""One optimizer step on this rank: the CPU engine (torch DDP + AdamW) and the GPU engine (megatron).

Both expose the same surface to the loop: ``train_step(micro_batches) -> (loss, grad_norm)``,
``eval_loss(batch)``, and optimizer state out/in for checkpoints: as megatron sharded state
(``sharded_optimizer_state``, ``torch_dist`` checkpoints) and, for the legacy safetensors layout,
as full tensors (``snapshot_optimizer``/``restore_optimizer``). The scheduler sets the LR on the
optimizer's param groups before each step, so the engines never touch the LR themselves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any, cast

import torch
import torch.distributed as dist

from trainer.checkpoint import restore_adamw, snapshot_adamw
from trainer.config import OptimConfig
from trainer.dist_state import GPU_OPTIMIZER_METADATA, adamw_sharded_state, load_adamw_state
from trainer.distributed import DistInfo, dp_group, tp_group
from trainer.optim import build_adamw, build_megatron_optimizer, clip_gradients, grad_norm

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


def token_loss(model: torch.nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    """Mean next-token cross-entropy over the unmasked tokens of one micro-batch."""
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    mask = batch["loss_mask"].to(device, non_blocking=True)
    positions = batch["position_ids"].to(device, non_blocking=True)
    per_token = model(tokens, positions, None, labels=labels)
    return cast(torch.Tensor, (per_token.float() * mask).sum() / mask.sum().clamp(min=1))


class CPUEngine:
    """fp32 on CPU; torch DDP over megatron's DP group; clipping with a TP-aware norm."""

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, info: DistInfo) -> None:
        self.info = info
        self.module = model
        self.device = torch.device("cpu")
        self.model: torch.nn.Module = model
        if info.dp_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(model, process_group=dp_group())
        self.optimizer = build_adamw(model, cfg)
        self.clip = cfg.clip_grad

    @property
    def param_groups_owner(self) -> torch.optim.Optimizer:
        return self.optimizer

    def train_step(self, micro_batches: Iterable[Batch], num_micro: int) -> tuple[torch.Tensor, float]:
        self.model.train()
        total = torch.zeros(())
        for i, batch in enumerate(micro_batches):
            last = i == num_micro - 1
            sync = contextlib.nullcontext() if last or self.info.dp_size == 1 else self.model.no_sync()  # type: ignore[operator]
            with sync:
                loss = token_loss(self.model, batch, self.device)
                (loss / num_micro).backward()  # type: ignore[no-untyped-call]
            total += loss.detach()
        norm = grad_norm(self.module, tp_group(), self.info.tp_rank, self.info.tp_size)
        clip_gradients(self.module, self.clip, norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / num_micro, float(norm)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> torch.Tensor:
        self.module.eval()
        return token_loss(self.module, batch, self.device)

    def sharded_optimizer_state(self, model_sharded: dict[str, Any], *, is_loading: bool) -> dict[str, Any]:
        """AdamW's state as megatron ShardedTensors (``torch_dist`` checkpoints)."""
        return adamw_sharded_state(self.optimizer, model_sharded, is_loading=is_loading)

    def load_sharded_optimizer_state(self, loaded: dict[str, Any], adam_step: int) -> None:
        load_adamw_state(self.optimizer, loaded, adam_step)

    def snapshot_optimizer(self) -> tuple[dict[str, torch.Tensor], Any]:
        return snapshot_adamw(
            self.optimizer, self.module, tp_group=tp_group(), tp_size=self.info.tp_size
        ), None

    def restore_optimizer(
        self, tensors: dict[str, torch.Tensor], megatron_state: Any, adam_step: int
    ) -> None:
        if not tensors:
            raise ValueError("checkpoint has no AdamW state for the CPU engine (was it written on GPU?)")
        restore_adamw(
            self.optimizer,
            self.module,
            tensors,
            adam_step,
            tp_rank=self.info.tp_rank,
            tp_size=self.info.tp_size,
        )


def _to_cpu(obj: Any) -> Any:
    """A copy of ``obj`` (nested dicts, lists, tuples) with every tensor cloned to the CPU.

    Optimizer state dicts hold *references* to the live (CUDA) moments and main params; a
    background save must not see the next step's in-place updates.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def chained(optimizer: Any) -> list[Any]:
    """The optimizers inside megatron's ``ChainedOptimizer`` (``get_megatron_optimizer`` always returns one)."""
    return list(getattr(optimizer, "chained_optimizers", None) or [optimizer])


def is_distributed_optimizer(optimizer: Any) -> bool:
    return hasattr(optimizer, "get_parameter_state_dp_zero")


def _load_distributed_parameter_state(opt: Any, state: Any) -> None:
    """``load_parameter_state_from_dp_zero`` (collective over DP: rank 0 scatters, the others pass
    None) around two defects of megatron-core 0.16 with torch's AdamW (no TE/apex):
    ``load_state_dict`` puts a ``step`` entry into every parameter's state, which the state loader
    then expects in the checkpoint (KeyError), and that entry is *one* tensor shared by all
    parameters, which torch's foreach AdamW would advance once per parameter and step."""
    inner = opt.optimizer.state
    steps = {p: st.pop("step") for p, st in inner.items() if "step" in st}
    opt.load_parameter_state_from_dp_zero(state)
    for p, step in steps.items():
        inner[p]["step"] = step.detach().clone()


class GPUEngine:
    """bf16 with fp32 main params: megatron DDP (bucketed grad reduction) + (distributed) optimizer.

    The distributed optimizer is used when data parallel (``distributed=None``), or as asked.
    Written for CUDA machines; the CI here has no GPU, so tests skip it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: OptimConfig,
        info: DistInfo,
        *,
        bf16: bool,
        distributed: bool | None = None,
    ) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.transformer.module import Float16Module

        self.info = info
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.distributed = info.dp_size > 1 if distributed is None else distributed
        config = model.config
        wrapped: torch.nn.Module = Float16Module(config, model) if bf16 else model
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=self.distributed
        )
        self.model = DistributedDataParallel(config, ddp_config, wrapped)
        self.module = model
        self.optimizer = build_megatron_optimizer(self.model, cfg, bf16=bf16, distributed=self.distributed)

    @property
    def param_groups_owner(self) -> Any:
        return self.optimizer

    def train_step(self, micro_batches: Iterable[Batch], num_micro: int) -> tuple[torch.Tensor, float]:
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            sync = contextlib.nullcontext() if i == num_micro - 1 else self.model.no_sync()
            with sync:
                loss = token_loss(self.model, batch, self.device)
                (loss / num_micro).backward()  # type: ignore[no-untyped-call]
            total += loss.detach()
        self.model.finish_grad_sync()
        _, norm, _ = self.optimizer.step()
        return total.cpu() / num_micro, float(norm or 0.0)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> torch.Tensor:
        self.model.eval()
        return token_loss(self.model, batch, self.device).cpu()

    def sharded_optimizer_state(self, model_sharded: dict[str, Any], *, is_loading: bool) -> dict[str, Any]:
        """megatron's own sharded optimizer state (``torch_dist`` checkpoints): fp32 main params and
        moments per parameter in model space, so a resume may change TP and DP."""
        state: dict[str, Any] = self.optimizer.sharded_state_dict(
            model_sharded, is_loading=is_loading, metadata=GPU_OPTIMIZER_METADATA
        )
        return state

    def load_sharded_optimizer_state(self, loaded: dict[str, Any], adam_step: int) -> None:
        self.optimizer.load_state_dict(loaded)
        # Without TE/apex megatron gives every parameter one shared ``step`` tensor, which torch's
        # foreach AdamW would advance once per parameter and step (see above): one each.
        for opt in chained(self.optimizer):
            if is_distributed_optimizer(opt):
                for st in opt.optimizer.state.values():
                    if "step" in st:
                        st["step"] = st["step"].detach().clone()

    def snapshot_optimizer(self) -> tuple[dict[str, torch.Tensor], Any]:
        # Legacy safetensors layout. Layout-dependent: per rank, the optimizer's own state dict (CPU copies) and, for the
        # distributed optimizer, the DP-gathered parameter state of each chained optimizer
        # (collective over DP; None on DP ranks other than 0); everything is collected on global
        # rank 0, which writes the checkpoint.
        parts = chained(self.optimizer)
        param_state = [
            opt.get_parameter_state_dp_zero() if is_distributed_optimizer(opt) else None for opt in parts
        ]
        local = {
            "tp_rank": self.info.tp_rank,
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "param_state": param_state,
            "rng_cuda": torch.cuda.get_rng_state(),
        }
        gathered: list[Any] = [None] * self.info.world_size if self.info.is_main else []
        if self.info.world_size > 1:
            dist.gather_object(local, gathered if self.info.is_main else None, dst=0)
        else:
            gathered = [local]
        tensors = {"rng/torch": torch.get_rng_state().clone()}
        return tensors, {
            "world_size": self.info.world_size,
            "tp_size": self.info.tp_size,
            "distributed_optimizer": self.distributed,
            "ranks": gathered,
        }

    def restore_optimizer(
        self, tensors: dict[str, torch.Tensor], megatron_state: Any, adam_step: int
    ) -> None:
        if megatron_state is None:
            raise ValueError("checkpoint has no megatron optimizer state (was it written on CPU?)")
        if (
            megatron_state["world_size"] != self.info.world_size
            or megatron_state["tp_size"] != self.info.tp_size
        ):
            raise ValueError("GPU training state can only be resumed with the same world size and TP size")
        if bool(megatron_state.get("distributed_optimizer")) != self.distributed:
            raise ValueError(
                "GPU training state was written "
                f"{'with' if megatron_state.get('distributed_optimizer') else 'without'} the distributed "
                "optimizer and must be resumed the same way"
            )
        mine = megatron_state["ranks"][self.info.rank]
        self.optimizer.load_state_dict(mine["optimizer"])
        for opt, state in zip(chained(self.optimizer), mine["param_state"], strict=True):
            if is_distributed_optimizer(opt):
                _load_distributed_parameter_state(opt, state)
        torch.cuda.set_rng_state(mine["rng_cuda"])
        if "rng/torch" in tensors:
            torch.set_rng_state(tensors["rng/torch"])
