"""Executing a plan: stream blocks of every output record through a prefetching reader into the writer.

Per block (at most ``plan.chunk_elems`` elements of one record: see :mod:`merger.blocks`) the
reader pool fetches its ranges from every checkpoint ahead of time (mmap views locally, ranged
reads remotely) while compute threads (one per core, single-threaded torch ops that release the
GIL) sum the previous block and a writer thread hands finished blocks to the output format's file
writer (:mod:`merger.formats.output`). The sum runs over cache-sized sub-blocks with every
checkpoint in plan order, acc = c_0·x_0, then acc += c_j·x_j: each output element sees the same
operations in the same order whatever the threads do, so identical inputs give bit-identical
output. Non-floating tensors and byte items are read from the newest checkpoint only and copied.
Memory is a few blocks (the prefetch depth), independent of model size and checkpoint count.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from merger.blocks import Piece, Work, work_items
from merger.errors import CorruptFileError, MergeError, NonFiniteError
from merger.formats.dtypes import DTYPES, tensor_view
from merger.formats.output import output_module
from merger.formats.sources import FsspecSource, LocalSource, Source, is_remote, open_source
from merger.plan import MergePart, MergePlan, TensorPlan
from merger.stats import MemorySampler, MergeStats, Stopwatch
from merger.verify import InputVerifier
from merger.write_thread import SinkFactory, WriteThread
from merger.writer import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""``on_progress(done_bytes, total_bytes)``: input bytes merged so far. Raising from it cancels
the merge cleanly (no output is published), which is how a task queue can revoke one."""

SUB_BLOCK = 1 << 20
"""Elements per arithmetic block: 4 MB of float32 accumulator stays in cache across checkpoints."""


class _Reader:
    """Opens every input file once and reads tensor ranges and byte items from it (thread-safe).

    With ``verify``, every range read from a store checkpoint is checked against the checksums of
    its manifest as it streams (merger/verify.py).
    """

    def __init__(self, plan: MergePlan, shard_indices: Sequence[int] = (), *, verify: bool = False) -> None:
        self.plan = plan
        self.sources: dict[tuple[int, int], Source] = {}
        for i, ck in enumerate(plan.inputs):
            for j, f in enumerate(ck.files):
                source = self.sources[i, j] = open_source(f.uri, plan.storage_options, size=f.size)
                if isinstance(source, LocalSource) and source.size() != f.size:
                    # Records were located when planning: a file changed since is not that file.
                    raise CorruptFileError(
                        f"{f.uri}: truncated or replaced since the merge was planned "
                        f"({source.size()} bytes, {f.size} planned)"
                    )
        self.remote = any(is_remote(f.uri) for ck in plan.inputs for f in ck.files)
        # Each input's chunks by offsets: inputs may list the same chunks in another order.
        self._chunks = [
            {name: {c.offsets: c for c in t.chunks} for name, t in ck.tensors.items()} for ck in plan.inputs
        ]
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
        """Every byte range the merge will read, by file: what the verifier checks blocks against."""
        reads: dict[tuple[int, int], list[tuple[int, int]]] = {}
        newest = self.plan.newest % len(self.plan.inputs)
        for w in work_items(self.plan, shard_indices):
            if w.tensor is None:
                key, offset, length = self._locate_item(newest, w.name)
                reads.setdefault(key, []).append((offset, length))
                continue
            for p in w.pieces:
                for i in sources_of(self.plan, w):
                    key, offset, length = self._locate(i, w.name, p)
                    reads.setdefault(key, []).append((offset, length))
        return reads

    def _locate(self, i: int, name: str, p: Piece) -> tuple[tuple[int, int], int, int]:
        stored = self._chunks[i][name][p.chunk]
        size = self.plan.inputs[i].tensors[name].itemsize
        return (i, stored.file), stored.byte_offset + p.start * size, p.count * size

    def _locate_item(self, i: int, name: str) -> tuple[tuple[int, int], int, int]:
        item = self.plan.inputs[i].items[name]
        return (i, item.file), item.byte_offset, item.nbytes

    def _where(self, i: int, name: str, p: Piece) -> tuple[Source, int, int]:
        key, offset, length = self._locate(i, name, p)
        return self.sources[key], offset, length

    def _read(self, key: tuple[int, int], offset: int, length: int) -> memoryview:
        view = self.sources[key].read(offset, length)
        if self.verifier is not None:
            self.verifier.feed(key, offset, view)
        return view

    def read(self, i: int, name: str, p: Piece) -> memoryview:
        return self._read(*self._locate(i, name, p))

    def read_item(self, i: int, name: str) -> memoryview:
        return self._read(*self._locate_item(i, name))

    def uris(self, w: Work) -> list[str]:
        """The file each input reads this work item from, to name it in errors."""
        if w.tensor is None or not w.pieces:
            return [ck.uri for ck in self.plan.inputs]
        name, key = w.name, w.pieces[0].chunk
        return [ck.files[self._chunks[i][name][key].file].uri for i, ck in enumerate(self.plan.inputs)]

    def check_now(self, plan: MergePlan, w: Work) -> None:
        """Verify at once every block this work item was read from (corruption is the truer reason)."""
        if self.verifier is not None and w.tensor is not None:
            for p in w.pieces:
                for i in sources_of(plan, w):
                    self.verifier.check_now(*self._locate(i, w.name, p))

    def finish(self) -> list[bool]:
        """Check what is left to verify; returns, per input, whether all it gave was verified."""
        if self.verifier is None:
            return [False] * len(self.plan.inputs)
        self.verifier.finish()
        return self.verifier.verified_inputs(len(self.plan.inputs))

    def release(self, i: int, name: str, p: Piece) -> None:
        """Drop a consumed range from this process's mapping (page cache keeps it)."""
        source, offset, length = self._where(i, name, p)
        if isinstance(source, LocalSource):
            source.release(offset, length)

    def close(self) -> None:
        for s in self.sources.values():
            s.close()


def _merge_float(
    t: TensorPlan,
    count: int,
    views: Sequence[memoryview],
    weights: Sequence[float],
    acc_dtype: torch.dtype,
    compute: ThreadPoolExecutor | None,
    workers: int,
    sources: Sequence[str] | None = None,
) -> torch.Tensor:
    """The weighted sum of one range; with ``sources`` (each input's file), NaN or Inf is refused."""
    xs = [tensor_view(v, t.in_dtype) for v in views]
    out = torch.empty(count, dtype=DTYPES[t.out_dtype][0])
    blocks = list(range(0, count, SUB_BLOCK))
    # A convex combination cannot leave the inputs' range, so the accumulator (in cache, one cheap
    # sum) shows any NaN/Inf of the inputs; only a narrower output dtype can add an overflow.
    probe_out = torch.finfo(out.dtype).max < torch.finfo(xs[0].dtype).max if xs else False

    def run(my_blocks: Sequence[int]) -> None:
        acc_buf = torch.empty(min(SUB_BLOCK, count), dtype=acc_dtype)
        for s in my_blocks:
            e = min(count, s + SUB_BLOCK)
            acc = acc_buf[: e - s]
            # copy_ then mul_: torch.mul(bf16, c, out=f32) would compute the product in bf16.
            acc.copy_(xs[0][s:e]).mul_(weights[0])
            for x, c in zip(xs[1:], weights[1:], strict=True):
                acc.add_(x[s:e], alpha=c)
            out[s:e].copy_(acc)
            if sources is not None and not _all_finite(out[s:e] if probe_out else acc):
                raise _nonfinite(t, xs, s, e, sources)

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
    t: TensorPlan, xs: Sequence[torch.Tensor], s: int, e: int, sources: Sequence[str]
) -> Exception:
    """Name the first input holding NaN/Inf in this block (or the overflowing output)."""
    name = t.name
    hint = "pass allow_nonfinite (wsm merge --allow-nonfinite) to merge it anyway"
    for i, x in enumerate(xs):
        bad = (~torch.isfinite(x[s:e])).nonzero()
        if len(bad):
            k = int(bad[0, 0])
            value = float(x[s + k])
            flat = s + k  # within the block being merged
            return NonFiniteError(
                f"{sources[i]}: tensor {name!r} holds {value} (element {flat} of a block being merged); "
                f"the merge is refused ({hint})"
            )
    return NonFiniteError(f"merged tensor {name!r} overflows {t.out_dtype}; the merge is refused ({hint})")


def _copy(t: TensorPlan, view: memoryview) -> torch.Tensor:
    """A non-float range, copied from the newest checkpoint (never averaged)."""
    return tensor_view(view, t.in_dtype).clone()


def _compute(
    work: Work,
    views: list[list[memoryview]],
    plan: MergePlan,
    acc_dtype: torch.dtype,
    compute: ThreadPoolExecutor | None,
    workers: int,
    files: Sequence[str] | None = None,
) -> torch.Tensor | bytes:
    """The output bytes of one block: merged (float), copied (non-float, byte item); with ``files``
    (the file each input reads it from), NaN or Inf in a float block is refused, naming the file."""
    t = work.tensor
    if t is None:
        return bytes(views[0][0])

    def one(p: Piece, vs: list[memoryview]) -> torch.Tensor:
        if t.is_float:
            return _merge_float(t, p.count, vs, plan.weights, acc_dtype, compute, workers, files)
        return _copy(t, vs[0])

    if work.block_shape is None:
        if not work.pieces:
            return torch.empty(0, dtype=DTYPES[t.out_dtype][0])
        return one(work.pieces[0], views[0])
    block = torch.empty(work.block_shape, dtype=DTYPES[t.out_dtype][0])
    for p, vs in zip(work.pieces, views, strict=True):
        assert p.dest is not None
        block[p.dest].copy_(one(p, vs).view(p.shape))  # the interleave: a strided copy into place
    return block.view(-1)


def sources_of(plan: MergePlan, w: Work) -> list[int]:
    """The inputs a work item reads: every checkpoint for a float tensor; the newest for the rest."""
    if w.tensor is not None and w.tensor.is_float:
        return list(range(len(plan.inputs)))
    return [plan.newest % len(plan.inputs)]


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
    total = plan.read_bytes(
        [plan.tensor(n) for s in shard_indices for n in plan.shards[s].tensors],
        [i for s in shard_indices for i in plan.shards[s].items],
    )
    acc_dtype = torch.float64 if plan.accumulate == "float64" else torch.float32
    # Parallelism comes from our own threads, each running single-threaded torch ops on its own
    # blocks (kernels release the GIL). torch's intra-op pool would instead synchronise all cores
    # on every 1M-element op: tens of thousands of barriers, which a busy machine turns into
    # seconds of waiting whenever one core is taken by another process.
    workers = threads or os.cpu_count() or 1
    # First: it refuses inputs changed since planning, before anything starts.
    reader = _Reader(plan, shard_indices, verify=verify)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    compute = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsm-sum") if workers > 1 else None
    n_inputs = len(plan.inputs)
    newest = plan.newest % n_inputs
    pool = ThreadPoolExecutor(
        max_workers=io_threads or (min(16, 2 * n_inputs) if reader.remote else 2),
        thread_name_prefix="wsm-read",
    )
    writer = WriteThread(output_dir, fsync=fsync, hash_output=hash_output, open_sink=open_sink)
    output = output_module(plan.out_format)
    pending: deque[tuple[Work, list[list[Future[memoryview]]]]] = deque()
    blocks = work_items(plan, shard_indices)
    done = 0
    ok = False
    try:
        with MemorySampler() as mem:

            def submit_next() -> bool:
                w = next(blocks, None)
                if w is None:
                    return False
                if w.tensor is None:
                    futs = [[pool.submit(reader.read_item, newest, w.name)]]
                else:
                    futs = [
                        [pool.submit(reader.read, i, w.name, p) for i in sources_of(plan, w)]
                        for p in w.pieces
                    ]
                pending.append((w, futs))
                return True

            for _ in range(_prefetch_depth(reader)):
                submit_next()
            opened: set[int] = set()
            while pending:
                w, futs = pending.popleft()
                submit_next()
                if w.shard not in opened:
                    shard = plan.shards[w.shard]
                    writer.open(w.shard, shard.filename, functools.partial(output.open_file, plan, shard))
                    opened.add(w.shard)
                t = time.perf_counter()
                views = [[f.result() for f in per_piece] for per_piece in futs]
                t = watch.add("wait_read", t)
                try:
                    files = None if plan.allow_nonfinite else reader.uris(w)
                    out = _compute(w, views, plan, acc_dtype, compute, workers, files)
                except NonFiniteError:
                    reader.check_now(plan, w)  # corrupt bytes are the truer reason, if they are one
                    raise
                in_bytes = sum(len(v) for per_piece in views for v in per_piece)
                del views
                if w.tensor is not None:
                    for p in w.pieces:
                        for i in sources_of(plan, w):
                            reader.release(i, w.name, p)
                watch.add("compute", t)
                writer.write(w.shard, w.record, out, w.first, w.last)
                if w.last_of_shard:
                    writer.commit(w.shard)
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
            for per_piece in futs:
                for f in per_piece:
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


def metadata_files(plan: MergePlan) -> dict[str, bytes]:
    """The output's small files written after its data: the safetensors index; DCP's
    ``.metadata``, ``common.pt`` (with the provenance) and ``metadata.json``."""
    from merger.manifest import provenance

    files: dict[str, bytes] = output_module(plan.out_format).metadata_files(plan, provenance(plan))
    return files


def check_outputs(plan: MergePlan, output_dir: str) -> None:
    """Every output file of ``plan`` is in ``output_dir`` with its planned size."""
    for shard in plan.shards:
        path = os.path.join(output_dir, shard.filename)
        expected = plan.shard_file_size(shard)
        if not os.path.isfile(path) or os.path.getsize(path) != expected:
            raise MergeError(f"{path}: shard missing or not {expected} bytes; did every part finish?")


def finalize_sharded(
    plan: MergePlan,
    output_dir: str,
    part_stats: Sequence[MergeStats],
    *,
    manifest: dict[str, Any] | None = None,
    fsync: bool = True,
) -> MergeStats:
    """After every part: check all files exist with the planned sizes, then write the metadata only
    (index / ``.metadata``, ``common.pt``, ``metadata.json``) and the manifest; no data is copied.

    The metadata (and then the manifest) is written last, so a directory holding it is complete.
    """
    stats = MergeStats.combine(list(part_stats))
    check_outputs(plan, output_dir)
    for name, data in metadata_files(plan).items():
        write_bytes_atomic(os.path.join(output_dir, name), data, fsync=fsync)
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
    """Merge into directory ``output``, then write the metadata and the manifest.

    safetensors: ``output/model.safetensors`` (or shards + index) and ``merge_manifest.json``.
    torch_dist: a Megatron-LM save dir, ``output/latest_checkpointed_iteration.txt`` and
    ``output/iter_<newest input's iteration>/`` (``release/`` without one) holding the DCP files
    and ``merge_manifest.json``: ``--load output`` in Megatron-LM, or ``dist_checkpointing.load``
    on the ``iter_`` directory.

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
    fsync = bool(kwargs.get("fsync", True))
    try:
        data_dir = staging
        if plan.out_format == "torch_dist":
            from merger.formats.dcp_writer import TRACKER_NAME, megatron_iteration_dir

            subdir, tracker = megatron_iteration_dir(plan)
            data_dir = os.path.join(staging, subdir)
            os.makedirs(data_dir)
            write_bytes_atomic(os.path.join(staging, TRACKER_NAME), tracker.encode(), fsync=fsync)
        hashes = hash_inputs_async(plan) if hash_inputs else None
        stats = run_shards(plan, range(len(plan.shards)), data_dir, **kwargs)
        input_hashes = hashes.result() if hashes is not None else {}
        manifest = build_manifest(plan, stats, input_hashes, extra=manifest_extra)
        for name, source in (copy_files or {}).items():  # config, tokenizer: published with the weights
            shutil.copyfile(source, os.path.join(data_dir, name))
        finalize_sharded(plan, data_dir, [stats], manifest=manifest, fsync=fsync)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return stats
