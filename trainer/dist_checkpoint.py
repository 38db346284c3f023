"""megatron-core ``dist_checkpointing.save`` on a CPU-only machine: the one place that makes it work.

megatron-core 0.16's ``torch_dist`` save path makes exactly two CUDA calls that have no CPU
meaning and fail when torch has no CUDA:

1. ``FileSystemWriterAsync.preload_tensors(buckets, non_blocking=True)`` copies each tensor to the
   CPU and then calls ``torch.cuda.synchronize()`` to wait for the (pinned, non-blocking) copies.
   Host tensors need no wait, so on CPU it runs with ``non_blocking=False``, which skips the call.
2. ``save_state_dict_async_finalize`` broadcasts a failure flag in a tensor allocated on
   ``torch.cuda.current_device()``. On CPU that flag lives on the CPU (gloo broadcasts it); only
   ``torch.cuda.current_device`` is redirected, and only while that function runs.

Everything else (planning, the ``.distcp`` records, ``.metadata``, ``common.pt``) is megatron's
own code, so a CPU save is byte-compatible with a GPU one. When CUDA is available nothing is
patched. Loading needs no shim.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch


def _finalize_on_cpu(finalize: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(finalize)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with mock.patch.object(torch.cuda, "current_device", lambda: torch.device("cpu")):
            return finalize(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def cpu_save_support() -> Iterator[None]:
    """Within this block ``dist_checkpointing.save`` works without CUDA; a no-op when CUDA exists."""
    if torch.cuda.is_available():
        yield
        return
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.dist_checkpointing.strategies import torch as mcore_torch

    writer = filesystem_async.FileSystemWriterAsync
    preload = writer.preload_tensors

    def preload_blocking(write_buckets: Any, non_blocking: bool = True) -> Any:
        return preload(write_buckets, non_blocking=False)

    with (
        mock.patch.object(writer, "preload_tensors", staticmethod(preload_blocking)),
        mock.patch.object(
            mcore_torch,
            "save_state_dict_async_finalize",
            _finalize_on_cpu(mcore_torch.save_state_dict_async_finalize),
        ),
    ):
        yield
