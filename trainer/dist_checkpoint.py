"""megatron-core ``dist_checkpointing`` saves on a CPU-only machine: the one place that makes them work.

megatron-core 0.16's ``torch_dist`` save path, and the ``AsyncCallsQueue`` that runs it in the
background, make a few CUDA calls that have no CPU meaning and fail when torch has no CUDA:

1. ``FileSystemWriterAsync.preload_tensors(buckets, non_blocking=True)`` copies each tensor to the
   CPU and then calls ``torch.cuda.synchronize()`` to wait for the (pinned, non-blocking) copies.
   Host tensors need no wait, so on CPU it runs with ``non_blocking=False``, which skips the call.
2. ``save_state_dict_async_finalize`` broadcasts a failure flag in a tensor allocated on
   ``torch.cuda.current_device()``.
3. ``TemporalAsyncCaller.schedule_async_call`` calls ``torch.cuda.synchronize()`` before it forks
   the writer process (to finish the device-to-host copies).
4. ``AsyncCaller.sync_all_async_calls`` and ``AsyncCallsQueue.maybe_finalize_async_calls``
   all-reduce small flags allocated on ``torch.cuda.current_device()``.

For 2 to 4 only those functions see a changed ``torch.cuda``, and only while they run:
``current_device()`` answers the CPU (gloo reduces the flags there) and ``synchronize()`` does
nothing (there is no device to wait for). Everything else (planning, the ``.distcp`` records,
``.metadata``, ``common.pt``, the forked writer) is megatron's own code, so a CPU save is
byte-compatible with a GPU one. A CUDA run patches nothing. Loading needs no shim.

One more fix, on every machine: the writer processes report their results through a queue that
megatron serves from a spawned ``multiprocessing`` manager process, and that process outlives a
trainer killed with SIGKILL. :func:`install_results_queue` starts that manager itself, once per
process, asking the kernel to end it with its parent (Linux ``PR_SET_PDEATHSIG``; the initializer
lives in the torch-free :mod:`trainer.parent_watch`, so the manager stays a small process).

Callers wrap every call into megatron's save and its queue in :func:`cpu_save_support`
(``trainer.dist_save`` does).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from multiprocessing.managers import SyncManager
from typing import Any
from unittest import mock

import torch

from trainer.parent_watch import die_with_parent


def _without_cuda(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with ``torch.cuda.current_device`` answering the CPU and ``synchronize`` a no-op."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with (
            mock.patch.object(torch.cuda, "current_device", lambda: torch.device("cpu")),
            mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None),
        ):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def cpu_save_support(on_cpu: bool | None = None) -> Iterator[None]:
    """Within this block megatron's (async) ``torch_dist`` save works without CUDA.

    ``on_cpu``: whether the tensors and the process group are on the CPU (gloo); by default,
    whether CUDA is absent. A CPU run on a CUDA machine passes True: its flags must stay on the
    CPU too. With False nothing is patched.
    """
    if not (on_cpu if on_cpu is not None else not torch.cuda.is_available()):
        yield
        return
    from megatron.core.dist_checkpointing.strategies import async_utils, filesystem_async
    from megatron.core.dist_checkpointing.strategies import torch as mcore_torch

    writer = filesystem_async.FileSystemWriterAsync
    preload = writer.preload_tensors

    def preload_blocking(write_buckets: Any, non_blocking: bool = True) -> Any:
        return preload(write_buckets, non_blocking=False)

    caller = async_utils.TemporalAsyncCaller
    with (
        mock.patch.object(writer, "preload_tensors", staticmethod(preload_blocking)),
        mock.patch.object(
            mcore_torch,
            "save_state_dict_async_finalize",
            _without_cuda(mcore_torch.save_state_dict_async_finalize),
        ),
        mock.patch.object(caller, "schedule_async_call", _without_cuda(caller.schedule_async_call)),
        mock.patch.object(
            async_utils.AsyncCaller,
            "sync_all_async_calls",
            _without_cuda(async_utils.AsyncCaller.sync_all_async_calls),
        ),
        mock.patch.object(
            async_utils.AsyncCallsQueue,
            "maybe_finalize_async_calls",
            _without_cuda(async_utils.AsyncCallsQueue.maybe_finalize_async_calls),
        ),
    ):
        yield


def install_results_queue() -> None:
    """Give megatron's async writers their results queue now (once per process), from a manager
    process that ends with this one; later saves reuse it and do not pay its start-up.

    The kernel ends the manager when the *thread* that started it exits, so the request is made
    only from the main thread; from another thread the manager lives as long as megatron's own.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is not None:
        return
    manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    main_thread = threading.current_thread() is threading.main_thread()
    manager.start(die_with_parent, (os.getpid(), main_thread))
    # The queue proxy keeps the manager object (and so its process) alive.
    filesystem_async._results_queue = manager.Queue()
