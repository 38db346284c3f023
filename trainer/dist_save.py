"""Checkpoints in Megatron's ``torch_dist`` format: every rank writes its own shards, in the background.

A save, on every rank (collective):

1. *Stall*, on the training thread: wait for the previous save, build the sharded state dict
   (:mod:`trainer.dist_state`; references, no copies), let megatron plan the save and write
   ``common.pt`` (rank 0), then schedule the write with megatron's ``AsyncCallsQueue``: device
   tensors are copied to the host (GPU) and a writer process is forked, which on the CPU is the
   snapshot itself (copy-on-write), so training may go on.
2. *Background*: each rank's writer writes its ``__<rank>_<i>.distcp`` files into a scratch
   directory; nothing is gathered. Tensors replicated over data parallel are written once, their
   writes spread over the DP ranks (Megatron-LM's fully parallel save).
3. *Finalize*, at the first step after every writer is done (:meth:`DistCheckpointer.poll`, a
   small all-reduce per step while a save is in flight): megatron's rank 0 writes ``.metadata``
   and ``metadata.json``; then rank 0's :class:`~trainer.checkpoint.AsyncSaver` publishes the
   scratch directory in the background, as Megatron-LM's layout
   (``latest_checkpointed_iteration.txt``, ``iter_<step:07d>/``) plus ``train_state.json``, the
   store's manifest last. On a local store the files are hard-linked, not copied.

The scratch directory is a hidden ``.tmp-`` entry beside the checkpoints on a local store (same
filesystem, so publishing links), else under ``checkpoint.scratch_dir`` (default: the system
temp dir; every rank must see it). A process killed at any point leaves only that hidden entry,
which ``Store.cleanup_stale`` removes; nothing half-written is ever listed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.checkpoint import STATE_FILE, AsyncSaver, CheckpointError, upload_delay_for_tests
from trainer.dist_checkpoint import cpu_save_support, install_results_queue
from trainer.distributed import DistInfo, broadcast_object, dp_group
from trainer.units import format_tokens
from wsm.store import CheckpointManifest, Store, checkpoint_name, layout

log = logging.getLogger(__name__)

_SCRATCH_PREFIX = ".tmp-dcp-"  # hidden, and a staging name that cleanup_stale knows


@dataclass
class DistPublication:
    """A checkpoint every rank has written into ``scratch``, for rank 0's saver to publish."""

    tokens: int
    step: int
    state: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    scratch: Path | None = None
    """Where the ranks write; chosen by :meth:`DistCheckpointer.save`."""

    @property
    def iter_dir(self) -> str:
        return layout.megatron_iter_dir(self.step)

    def write(self, store: Store, run: str) -> CheckpointManifest:
        assert self.scratch is not None
        with store.publish_checkpoint(run, self.tokens, step=self.step, extra=self.extra) as pub:
            pub.put_tree(self.scratch / self.iter_dir, self.iter_dir, link=store.is_local)
            delay = upload_delay_for_tests(self.tokens)
            if delay:
                time.sleep(delay)
            pub.write_bytes(layout.MEGATRON_TRACKER_FILE, str(self.step).encode())
            pub.write_bytes(STATE_FILE, json.dumps(self.state, indent=1, sort_keys=True).encode())
        assert pub.manifest is not None
        return pub.manifest

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class DistCheckpointer:
    """This rank's side of ``torch_dist`` checkpoints; ``saver`` is rank 0's publisher (None elsewhere)."""

    def __init__(
        self,
        store: Store,
        run: str,
        info: DistInfo,
        saver: AsyncSaver | None,
        *,
        scratch_dir: str | None = None,
        writers: int = 1,
    ) -> None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
        from megatron.core.dist_checkpointing.strategies.fully_parallel import (
            FullyParallelSaveStrategyWrapper,
        )
        from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

        self.store = store
        self.run = run
        self.info = info
        self.saver = saver
        self.scratch_dir = scratch_dir
        self.queue = AsyncCallsQueue()
        # One strategy for the run: megatron keeps per-run planning state in it. Tensors replicated
        # over data parallel are written once, their writes spread over the DP ranks (Megatron-LM's
        # fully parallel save), so every rank writes a share.
        self.strategy: Any = TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=writers)
        if info.dp_size > 1:
            self.strategy = FullyParallelSaveStrategyWrapper(
                self.strategy, dp_group(), do_cache_distribution=True
            )
        self._validated = False
        self._in_flight: DistPublication | None = None
        install_results_queue()  # now, not inside the first save's stall

    # -- saving -------------------------------------------------------------------------------
    def save(self, state_dict: dict[str, Any], job: DistPublication, *, sync: bool = False) -> None:
        """Start writing ``state_dict`` (collective); ``job`` carries what rank 0 publishes."""
        from megatron.core import dist_checkpointing

        job.scratch = scratch = self._make_scratch(job.tokens)
        target = scratch / job.iter_dir
        target.mkdir(parents=True, exist_ok=True)
        job.started = time.perf_counter()
        try:
            with cpu_save_support(not self.info.cuda):
                request = dist_checkpointing.save(
                    state_dict,
                    str(target),
                    sharded_strategy=self.strategy,
                    async_sharded_save=True,
                    # The structure never changes within a run: check it once (all-gather of metadata).
                    validate_access_integrity=not self._validated,
                )
                assert request is not None
                request.add_finalize_fn(functools.partial(self._finalize, job))
                self.queue.schedule_async_request(request)
        except BaseException:
            if self.info.is_main:
                job.close()
            raise
        self._validated = True
        self._in_flight = job
        if sync:
            self.wait()

    def _make_scratch(self, tokens: int) -> Path:
        """A fresh scratch directory chosen by rank 0, the same path on every rank."""
        path: str | None = None
        if self.info.is_main:
            name = f"{_SCRATCH_PREFIX}{checkpoint_name(tokens)}-{uuid.uuid4().hex[:12]}"
            if self.scratch_dir is None and self.store.is_local:
                base = self.store.full_path(layout.checkpoints_dir(self.run))
            else:
                base = self.scratch_dir or tempfile.gettempdir()
            os.makedirs(os.path.join(base, name))
            path = os.path.join(base, name)
        shared = broadcast_object(path)
        assert isinstance(shared, str)
        return Path(shared)

    def _finalize(self, job: DistPublication) -> None:
        """After megatron's own finalize (``.metadata``, ``metadata.json``, a barrier): hand over."""
        self._in_flight = None
        if self.saver is None:
            return
        log.info(
            "checkpoint %s tokens: shards written by %d rank(s) in %.2fs; publishing",
            format_tokens(job.tokens),
            self.info.world_size,
            time.perf_counter() - job.started,
        )
        self.saver.submit(job)

    # -- progress -----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return bool(self.queue.get_num_unfinalized_calls() > 0)

    def poll(self) -> None:
        """Finalize a save whose writers are all done (collective while one is in flight)."""
        if self.busy:
            self._finalize_calls(blocking=False)
        if self.saver is not None:
            self.saver.check()

    def wait(self) -> float:
        """Block until the in-flight save is written and published; returns the seconds waited."""
        start = time.perf_counter()
        if self.busy:
            self._finalize_calls(blocking=True)
        if self.saver is not None:
            self.saver.wait()
            self.saver.check()
        return time.perf_counter() - start

    def _finalize_calls(self, *, blocking: bool) -> None:
        try:
            with cpu_save_support(not self.info.cuda):
                self.queue.maybe_finalize_async_calls(blocking=blocking)
        except Exception as exc:
            job, self._in_flight = self._in_flight, None
            if job is not None and self.info.is_main:
                job.close()
            raise CheckpointError(f"writing the checkpoint's shards failed: {exc}") from exc
