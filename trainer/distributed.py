"""Process groups: torchrun (gloo on CPU, NCCL on GPU) or a single process, plus megatron's parallel state.

A single process still gets a one-rank process group, because megatron's layers ask parallel
state for their TP group even at TP=1. Initialisation is idempotent within a process (tests build
several models), and re-initialises megatron's groups if the tensor-parallel size changes.

On GPU megatron's groups come with Gloo twins: the distributed optimizer gathers and scatters its
state over them. A process that owns a one-rank group (no torchrun: tests, evaluation workers)
and asks for the other device than its group was made for gets a fresh group with the right
backend; under torchrun a gloo group asked for CUDA is an error.
Collectives on small host-side values (loss, stop flag) go through :func:`collective_device`:
NCCL takes only CUDA tensors.
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from megatron.core import parallel_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the parallel layout."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    cuda: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# (tensor_parallel, with gloo twins) of megatron's current parallel state, set by init_distributed.
_LAYOUT: tuple[int, bool] | None = None


def _own_group() -> bool:
    """Whether this process created its one-rank group itself (no torchrun environment)."""
    return not ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _init_process_group(backend: str, cuda: bool) -> None:
    if not _own_group():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        return
    # A file store needs no free port, so concurrent single-process runs never collide.
    fd, path = tempfile.mkstemp(prefix="wsm-pg-")
    os.close(fd)
    os.unlink(path)
    dist.init_process_group(backend, init_method=f"file://{path}", rank=0, world_size=1)


def init_distributed(tensor_parallel: int = 1, cuda: bool = False) -> DistInfo:
    """Join (or create) the process group and set megatron's TP/DP groups; returns the layout."""
    global _LAYOUT
    wanted = "nccl" if cuda else "gloo"
    if dist.is_initialized() and dist.get_backend() != wanted:
        if not _own_group():
            if cuda:
                raise RuntimeError(f"the process group uses {dist.get_backend()}; CUDA training needs NCCL")
        else:
            # One rank whose group was made for the other device by an earlier model in this
            # process (megatron's TP collectives run even at TP=1, and NCCL takes only CUDA
            # tensors, gloo few ops on them): start over with the right backend.
            log.info("re-creating the one-rank process group with %s", wanted)
            if parallel_state.model_parallel_is_initialized():
                parallel_state.destroy_model_parallel()
            dist.destroy_process_group()
            _LAYOUT = None
    if not dist.is_initialized():
        _init_process_group(wanted, cuda)
    world = dist.get_world_size()
    if world % tensor_parallel:
        raise ValueError(f"parallel.tensor_parallel={tensor_parallel} must divide the world size {world}")
    if parallel_state.model_parallel_is_initialized() and (
        parallel_state.get_tensor_model_parallel_world_size() != tensor_parallel
        or _LAYOUT is None
        or (cuda and not _LAYOUT[1])
    ):
        parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_parallel, create_gloo_process_groups=cuda
        )
        _LAYOUT = (tensor_parallel, cuda)
    return DistInfo(
        rank=dist.get_rank(),
        world_size=world,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=tensor_parallel,
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        cuda=cuda,
    )


def collective_device() -> torch.device:
    """Where tensors for collectives on host-side values must live: CUDA under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def tp_group() -> dist.ProcessGroup:
    return cast(dist.ProcessGroup, parallel_state.get_tensor_model_parallel_group())


def dp_group() -> dist.ProcessGroup:
    return cast(dist.ProcessGroup, parallel_state.get_data_parallel_group())


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from global rank ``src`` to all ranks (no-op in one process)."""
    if dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
