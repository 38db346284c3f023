"""Executing a plan: stream chunks of every tensor through a prefetching reader into the writer.

Per chunk (a slice of at most ``plan.chunk_elems`` elements of one flattened tensor) the
reader pool fetches that slice from every checkpoint ahead of time (mmap views locally, ranged
reads remotely) while compute threads (one per core, single-threaded torch ops that release the
GIL) sum the previous chunk and a writer thread appends finished chunks to the output. The sum runs over cache-sized sub-blocks with every checkpoint in
plan order, acc = c_0·x_0, then acc += c_j·x_j: each output element sees the same operations in
the same order whatever the threads do, so identical inputs give bit-identical output. Memory is
a few chunks (the prefetch depth), independent of model size and checkpoint count.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from merger.errors import MergeError, MismatchError, NonFiniteError
from merger.formats.dtypes import DTYPES, tensor_view
from merger.formats.safetensors import INDEX_NAME
from merger.formats.sources import FsspecSource, LocalSource, Source, is_remote, open_source
from merger.plan import MergePart, MergePlan, TensorPlan
from merger.stats import MemorySampler, MergeStats, Stopwatch
from merger.verify import InputVerifier
from merger.write_thread import SinkFactory, WriteThread
from merger.writer import hf_index, write_json_atomic

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""``on_progress(done_bytes, total_bytes)``: input bytes merged so far. Raising from it cancels
the merge cleanly (no output is published), which is how a task queue can revoke one."""

SUB_BLOCK = 1 << 20
"""Elements per arithmetic block: 4 MB of float32 accumulator stays in cache across checkpoints."""


@dataclass(frozen=True)
class _Chunk:
    """A slice of one stored chunk of a tensor (a safetensors tensor is one stored chunk)."""

    shard: int
    tensor: TensorPlan
    part: int
    """Index of the stored chunk in the tensor's chunk list (the same layout in every input)."""
    start: int
    """First element of this slice within the stored chunk."""
    count: int
    base: int
    """First element of the stored chunk in the flattened tensor (chunks are slabs along dim 0)."""
    last_of_shard: bool


def _chunks(plan: MergePlan, shard_indices: Sequence[int]) -> Iterator[_Chunk]:
    by_name = {t.name: t for t in plan.tensors}
    ref = plan.inputs[0]
    for s in shard_indices:
        names = plan.shards[s].tensors
        for k, name in enumerate(names):
            t = by_name[name]
            stored = ref.tensors[name].chunks
            base = 0
            for p, c in enumerate(stored):
                starts = list(range(0, c.numel, plan.chunk_elems)) or [0]
                for i, start in enumerate(starts):
                    last = k == len(names) - 1 and p == len(stored) - 1 and i == len(starts) - 1
                    yield _Chunk(s, t, p, start, min(plan.chunk_elems, c.numel - start), base, last)
                base += c.numel


class _Reader:
    """Opens every input file once and reads tensor slices from it (thread-safe).

    With ``verify``, every slice read from a store checkpoint is checked against the checksums of
    its manifest as it streams (merger/verify.py).
    """

    def __init__(self, plan: MergePlan, shard_indices: Sequence[int], *, verify: bool = True) -> None:
        self.plan = plan
        self.sources: dict[tuple[int, int], Source] = {}
        for i, ck in enumerate(plan.inputs):
            for j, f in enumerate(ck.files):
                self.sources[i, j] = open_source(f.uri, plan.storage_options, size=f.size)
        self.remote = any(is_remote(f.uri) for ck in plan.inputs for f in ck.files)
        self.verifier: InputVerifier | None = None
        if verify:
            try:
                self.verifier = InputVerifier(
                    {(i, j): f for i, ck in enumerate(plan.inputs) for j, f in enumerate(ck.files)},
                    self._planned_reads(shard_indices),
                    {k: s.read for k, s in self.sources.items()},
                    {k: isinstance(s, FsspecSource) for k, s in self.sources.items()},
                )
            except BaseException:
                self.close()
                raise

    def _planned_reads(self, shard_indices: Sequence[int]) -> dict[tuple[int, int], list[tuple[int, int]]]:
        reads: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for c in _chunks(self.plan, shard_indices):
            for i in range(len(self.plan.inputs)):
                key, offset, length = self._locate(i, c)
                reads.setdefault(key, []).append((offset, length))
        return reads

    def _locate(self, i: int, c: _Chunk) -> tuple[tuple[int, int], int, int]:
        entry = self.plan.inputs[i].tensors[c.tensor.name]
        stored = entry.chunks[c.part]
        size = entry.itemsize
        return (i, stored.file), stored.byte_offset + c.start * size, c.count * size

    def _where(self, i: int, c: _Chunk) -> tuple[Source, int, int]:
        key, offset, length = self._locate(i, c)
        return self.sources[key], offset, length

    def read(self, i: int, c: _Chunk) -> memoryview:
        key, offset, length = self._locate(i, c)
        view = self.sources[key].read(offset, length)
        if self.verifier is not None:
            self.verifier.feed(key, offset, view)
        return view

    def release(self, i: int, c: _Chunk) -> None:
        """Drop a consumed slice from this process's mapping (page cache keeps it)."""
        source, offset, length = self._where(i, c)
        if isinstance(source, LocalSource):
            source.release(offset, length)

    def check_now(self, c: _Chunk) -> None:
        """Verify, at once, every block this chunk was read from (see :meth:`InputVerifier.check_now`)."""
        if self.verifier is not None:
            for i in range(len(self.plan.inputs)):
                self.verifier.check_now(*self._locate(i, c))

    def finish(self) -> list[bool]:
        """Check what is left to verify; returns, per input, whether all it gave was verified."""
        if self.verifier is None:
            return [False] * len(self.plan.inputs)
        self.verifier.finish()
        return self.verifier.verified_inputs(len(self.plan.inputs))

    def close(self) -> None:
        for s in self.sources.values():
            s.close()


def _merge_float(
    chunk: _Chunk,
    views: Sequence[memoryview],
    weights: Sequence[float],
    acc_dtype: torch.dtype,
    compute: ThreadPoolExecutor | None,
    workers: int,
    sources: Sequence[str] | None = None,
) -> torch.Tensor:
    """The weighted sum of one chunk; with ``sources`` (each input's file), NaN or Inf is refused."""
    t = chunk.tensor
    xs = [tensor_view(v, t.in_dtype) for v in views]
    out = torch.empty(chunk.count, dtype=DTYPES[t.out_dtype][0])
    blocks = list(range(0, chunk.count, SUB_BLOCK))
    # A convex combination cannot leave the inputs' range, so the accumulator (in cache, one cheap
    # sum) shows any NaN/Inf of the inputs; only a narrower output dtype can add an overflow.
    probe_out = torch.finfo(out.dtype).max < torch.finfo(xs[0].dtype).max if xs else False

    def run(my_blocks: Sequence[int]) -> None:
        acc_buf = torch.empty(min(SUB_BLOCK, chunk.count), dtype=acc_dtype)
        for s in my_blocks:
            e = min(chunk.count, s + SUB_BLOCK)
            acc = acc_buf[: e - s]
            # copy_ then mul_: torch.mul(bf16, c, out=f32) would compute the product in bf16.
            acc.copy_(xs[0][s:e]).mul_(weights[0])
            for x, c in zip(xs[1:], weights[1:], strict=True):
                acc.add_(x[s:e], alpha=c)
            out[s:e].copy_(acc)
            if sources is not None and not _all_finite(out[s:e] if probe_out else acc):
                raise _nonfinite(chunk, xs, s, e, sources)

    if compute is None or workers == 1 or len(blocks) <= 1:
        run(blocks)
    else:
        # Contiguous block ranges per thread; every element sees the same ops in the same order,
        # so the split cannot change a bit.
        per = -(-len(blocks) // workers)
        futures = [compute.submit(run, blocks[i : i + per]) for i in range(0, len(blocks), per)]
        for f in futures:
            f.result()
    return out


def _all_finite(t: torch.Tensor) -> bool:
    # One sum is far cheaper than isfinite().all(); a NaN/Inf anywhere makes it non-finite, and a
    # finite tensor whose sum overflows gets the exact test.
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _nonfinite(
    chunk: _Chunk, xs: Sequence[torch.Tensor], s: int, e: int, sources: Sequence[str]
) -> Exception:
    """Name the first input holding NaN/Inf in this block (or the overflowing output)."""
    name = chunk.tensor.name
    hint = "pass allow_nonfinite (wsm merge --allow-nonfinite) to merge it anyway"
    for i, x in enumerate(xs):
        bad = (~torch.isfinite(x[s:e])).nonzero()
        if len(bad):
            k = int(bad[0, 0])
            value = float(x[s + k])
            flat = chunk.base + chunk.start + s + k
            return NonFiniteError(
                f"{sources[i]}: tensor {name!r} holds {value} at flat index {flat}; "
                f"the merge is refused ({hint})"
            )
    return NonFiniteError(
        f"merged tensor {name!r} overflows {chunk.tensor.out_dtype} near flat index "
        f"{chunk.base + chunk.start + s}; the merge is refused ({hint})"
    )


def _copy_exact(chunk: _Chunk, views: Sequence[memoryview], plan: MergePlan) -> torch.Tensor:
    """Non-float tensors (token ids, masks, counters) cannot be averaged: they must agree exactly."""
    ref = (
        torch.frombuffer(views[0], dtype=torch.uint8) if len(views[0]) else torch.empty(0, dtype=torch.uint8)
    )
    for i, v in enumerate(views[1:], start=1):
        other = torch.frombuffer(v, dtype=torch.uint8) if len(v) else ref
        if not torch.equal(ref, other):
            bad = int((ref != other).nonzero()[0, 0]) // DTYPES[chunk.tensor.in_dtype][1]
            bad += chunk.base + chunk.start
            ck = plan.inputs[i]
            where = ck.files[ck.tensors[chunk.tensor.name].chunks[chunk.part].file].uri
            raise MismatchError(
                f"{where}: non-float tensor {chunk.tensor.name!r} ({chunk.tensor.in_dtype}) differs from "
                f"{plan.inputs[0].uri} at flat index {bad}; non-float tensors must be identical to be merged"
            )
    return ref.clone()


def _files_of(plan: MergePlan, chunk: _Chunk) -> list[str]:
    """The file each input reads this chunk from, to name it in errors."""
    return [ck.files[ck.tensors[chunk.tensor.name].chunks[chunk.part].file].uri for ck in plan.inputs]


def _prefetch_depth(reader: _Reader) -> int:
    # Local reads are views (no memory); remote reads are buffers of up to inflight bytes each.
    return 2 if reader.remote else 3


def run_shards(
    plan: MergePlan,
    shard_indices: Sequence[int],
    output_dir: str | None,
    *,
    open_sink: SinkFactory | None = None,
    on_progress: ProgressFn | None = None,
    threads: int | None = None,
    io_threads: int | None = None,
    fsync: bool = True,
    hash_output: bool = True,
    verify: bool = True,
) -> MergeStats:
    """Write shards ``shard_indices`` of ``plan`` into ``output_dir`` (each atomically), or into
    the sinks ``open_sink(filename)`` returns (a store publisher).

    ``verify`` checks every byte read from a store checkpoint against its manifest's checksums
    (turn it off only to measure what it costs). NaN/Inf in inputs or output fail the merge unless
    ``plan.allow_nonfinite``.
    """
    stats = MergeStats(checkpoints=len(plan.inputs))
    watch = Stopwatch()
    t0 = time.perf_counter()
    total = len(plan.inputs) * sum(
        plan.tensor(n).in_nbytes for s in shard_indices for n in plan.shards[s].tensors
    )
    acc_dtype = torch.float64 if plan.accumulate == "float64" else torch.float32
    reader = _Reader(plan, shard_indices, verify=verify)
    # Parallelism comes from our own threads, each running single-threaded torch ops on its own
    # blocks (kernels release the GIL). torch's intra-op pool would instead synchronise all cores
    # on every 1M-element op: tens of thousands of barriers, which a busy machine turns into
    # seconds of waiting whenever one core is taken by another process.
    workers = threads or os.cpu_count() or 1
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    compute = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsm-sum") if workers > 1 else None
    n_inputs = len(plan.inputs)
    pool = ThreadPoolExecutor(
        max_workers=io_threads or (min(16, 2 * n_inputs) if reader.remote else 2),
        thread_name_prefix="wsm-read",
    )
    writer = WriteThread(output_dir, fsync=fsync, hash_output=hash_output, open_sink=open_sink)
    pending: deque[tuple[_Chunk, list[Future[memoryview]]]] = deque()
    chunks = _chunks(plan, shard_indices)
    done = 0
    ok = False
    try:
        with MemorySampler() as mem:

            def submit_next() -> bool:
                c = next(chunks, None)
                if c is None:
                    return False
                futs = [pool.submit(reader.read, i, c) for i in range(n_inputs)]
                pending.append((c, futs))
                return True

            for _ in range(_prefetch_depth(reader)):
                submit_next()
            opened: set[int] = set()
            while pending:
                chunk, futs = pending.popleft()
                submit_next()
                if chunk.shard not in opened:
                    shard = plan.shards[chunk.shard]
                    entries = [(n, plan.tensor(n).out_dtype, plan.tensor(n).shape) for n in shard.tensors]
                    writer.open(chunk.shard, shard.filename, entries, dict(plan.metadata))
                    opened.add(chunk.shard)
                t = time.perf_counter()
                views = [f.result() for f in futs]
                t = watch.add("wait_read", t)
                if chunk.tensor.is_float:
                    try:
                        out = _merge_float(
                            chunk,
                            views,
                            plan.weights,
                            acc_dtype,
                            compute,
                            workers,
                            None if plan.allow_nonfinite else _files_of(plan, chunk),
                        )
                    except NonFiniteError:
                        reader.check_now(chunk)  # corrupt bytes are the truer reason, if they are one
                        raise
                else:
                    out = _copy_exact(chunk, views, plan)
                del views
                for i in range(n_inputs):
                    reader.release(i, chunk)
                watch.add("compute", t)
                writer.write(chunk.shard, out)
                if chunk.last_of_shard:
                    writer.commit(chunk.shard)
                in_bytes = n_inputs * chunk.count * DTYPES[chunk.tensor.in_dtype][1]
                done += in_bytes
                if on_progress is not None:
                    on_progress(done, total)
            t = time.perf_counter()
            stats.verified_inputs = reader.finish()
            t = watch.add("verify_rest", t)
            stats.files = writer.finish()
            watch.add("write_drain", t)
            ok = True
    finally:
        for _, futs in pending:
            for f in futs:
                f.cancel()
        pool.shutdown(wait=True)
        if compute is not None:
            compute.shutdown(wait=True)
        if not ok:
            writer.abort()
        reader.close()
        torch.set_num_threads(old_threads)
    stats.seconds = time.perf_counter() - t0
    stats.bytes_read = done
    stats.bytes_written = sum(int(f["size"]) for f in stats.files)
    stats.verified_bytes = reader.verifier.verified_bytes if reader.verifier is not None else 0
    stats.tensors = sum(len(plan.shards[s].tensors) for s in shard_indices)
    stats.peak_rss, stats.peak_anon_rss = mem.peak_rss, mem.peak_anon
    stats.timings = {**watch.totals, "write": writer.seconds, "total": stats.seconds}
    return stats


def merge_part(part: MergePart, output_dir: str, **kwargs: Any) -> MergeStats:
    """Execute one part of a split plan: write its shards into ``output_dir`` (shared by all parts)."""
    os.makedirs(output_dir, exist_ok=True)
    return run_shards(part.plan, part.shard_indices, output_dir, **kwargs)


def finalize_index(plan: MergePlan) -> dict[str, Any] | None:
    """The HF index of a sharded plan's output (None for a single file)."""
    if not plan.sharded:
        return None
    weight_map = {name: shard.filename for shard in plan.shards for name in shard.tensors}
    return hf_index(weight_map, plan.output_bytes)


def finalize_sharded(
    plan: MergePlan,
    output_dir: str,
    part_stats: Sequence[MergeStats],
    *,
    manifest: dict[str, Any] | None = None,
    fsync: bool = True,
) -> MergeStats:
    """After every part: check all shards exist with the planned sizes, write the index and manifest.

    The index (and then the manifest) is written last, so a directory with an index is complete.
    """
    stats = MergeStats.combine(list(part_stats))
    for shard in plan.shards:
        path = os.path.join(output_dir, shard.filename)
        expected = plan.shard_file_size(shard)
        if not os.path.isfile(path) or os.path.getsize(path) != expected:
            raise MergeError(f"{path}: shard missing or not {expected} bytes; did every part finish?")
    index = finalize_index(plan)
    if index is not None:
        write_json_atomic(os.path.join(output_dir, INDEX_NAME), index, fsync=fsync)
    if manifest is not None:
        from merger.manifest import MANIFEST_NAME

        write_json_atomic(os.path.join(output_dir, MANIFEST_NAME), manifest, fsync=fsync)
    return stats


def execute_merge(
    plan: MergePlan,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    manifest_extra: dict[str, Any] | None = None,
    hash_inputs: bool = False,
    copy_files: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> MergeStats:
    """Merge into directory ``output``: ``model.safetensors`` or shards + index, then the manifest.

    Everything is written to a hidden staging directory next to ``output`` and moved into place
    only when complete, so a failure (bad input, cancellation) leaves no partial output behind.
    ``kwargs`` go to :func:`run_shards` (``on_progress``, ``threads``, ``fsync``, ...).
    """
    from merger.manifest import build_manifest, hash_inputs_async

    out = os.fspath(output)
    if os.path.exists(out) and os.listdir(out) and not overwrite:
        raise MergeError(f"{out}: output directory exists and is not empty (use overwrite)")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(out))}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        hashes = hash_inputs_async(plan) if hash_inputs else None
        stats = run_shards(plan, range(len(plan.shards)), staging, **kwargs)
        input_hashes = hashes.result() if hashes is not None else {}
        manifest = build_manifest(plan, stats, input_hashes, extra=manifest_extra)
        for name, source in (copy_files or {}).items():  # config, tokenizer: published with the weights
            shutil.copyfile(source, os.path.join(staging, name))
        finalize_sharded(plan, staging, [stats], manifest=manifest, fsync=bool(kwargs.get("fsync", True)))
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return stats
