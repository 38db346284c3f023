"""What each step of a merge reads and where its result goes: the blocks of every output record.

An output file is a list of records (:meth:`merger.plan.MergePlan.records`); the engine merges
each record in blocks of at most ``plan.chunk_elems`` elements, in output byte order:

- a record that is one stored chunk (``torch_dist`` keeps the inputs' chunk layout): consecutive
  ranges of that chunk, found in every input by the chunk's offsets;
- a whole tensor whose chunks are consecutive blocks of it in C order (one safetensors tensor, a
  Megatron embedding split by rows, the per-layer pieces of a stacked tensor): consecutive ranges
  of each chunk in turn;
- a whole tensor whose chunks are cut along other dimensions (a tensor-parallel row-parallel
  weight split along dimension 1): blocks of the C-contiguous tensor, each assembled from one
  contiguous range of every chunk it crosses, merged piece by piece and interleaved into place
  with a strided copy (:func:`interleaved_blocks`). Memory stays one block, whatever the layout;
- a byte item: copied whole from the newest checkpoint.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from merger.formats.base import TensorEntry
from merger.formats.output import OutRecord

if TYPE_CHECKING:
    from merger.plan import MergePlan, TensorPlan


@dataclass(frozen=True)
class Piece:
    """A contiguous range of one stored chunk, found in every input by the chunk's offsets."""

    chunk: tuple[int, ...]
    """Offsets of the stored chunk in the global tensor: the same chunk in every input."""
    start: int
    """First element of the range within the stored chunk (C order)."""
    count: int
    dest: tuple[slice, ...] | None = None
    """Where the range goes in its block (None: it is the whole block, in order)."""
    shape: tuple[int, ...] = ()
    """Shape of the range when ``dest`` is set."""


@dataclass(frozen=True)
class Work:
    """One block of output: a slice of a record of an output file, or a whole byte item."""

    shard: int
    record: int
    """Index of the record in the output file (see :meth:`MergePlan.records`)."""
    name: str
    tensor: TensorPlan | None
    """None for a byte item (copied whole from the newest checkpoint)."""
    count: int
    """Elements of the block (a byte item: 0)."""
    pieces: tuple[Piece, ...]
    block_shape: tuple[int, ...] | None
    """Shape of the block when its pieces are interleaved (None: one piece, the block itself)."""
    first: bool
    last: bool
    last_of_shard: bool


def rows_in_order(entry: TensorEntry) -> bool:
    """Whether the chunks, in offsets order, are consecutive blocks of the tensor in C order: their
    bytes concatenate to the whole tensor, so it is merged chunk by chunk as stored. Slabs along
    dimension 0 are such blocks, and so are Megatron's per-layer pieces of a stacked tensor
    (``[1, rows, cols]`` at ``(layer, row, 0)``, e.g. the gate and up halves of ``linear_fc1``)."""
    if not entry.shape:
        return len(entry.chunks) == 1
    flat = 0
    for c in sorted(entry.chunks, key=lambda c: c.offsets):
        # A block: size 1 before some dimension d, whole dimensions after it.
        d = next((i for i, n in enumerate(c.sizes) if n != 1), len(c.sizes) - 1)
        whole = all(
            c.offsets[i] == 0 and c.sizes[i] == entry.shape[i] for i in range(d + 1, len(entry.shape))
        )
        if not whole or _flat_index(c.offsets, entry.shape) != flat:
            return False
        flat += c.numel
    return flat == entry.numel


def _flat_index(index: Sequence[int], sizes: Sequence[int]) -> int:
    flat = 0
    for i, n in zip(index, sizes, strict=True):
        flat = flat * n + i
    return flat


def interleaved_blocks(entry: TensorEntry, limit: int) -> Iterator[tuple[tuple[int, ...], tuple[Piece, ...]]]:
    """Blocks of the C-contiguous global tensor assembled from chunks cut along any dimensions.

    A block fixes the indices of dimensions ``< d`` and takes a range of dimension ``d`` and all
    of the following ones, ``d`` being the first dimension whose trailing elements fit ``limit``.
    Each chunk it crosses contributes one contiguous range of its own storage (its full extent
    along the trailing dimensions), merged as one piece and copied into the block at its offsets.
    """
    shape = entry.shape
    nd = len(shape)
    d = next(i for i in range(nd) if math.prod(shape[i + 1 :]) <= limit)
    step = max(1, limit // math.prod(shape[d + 1 :]))
    chunks = sorted(entry.chunks, key=lambda c: c.offsets)
    for lead in itertools.product(*(range(n) for n in shape[:d])):
        mine = [
            c
            for c in chunks
            if all(o <= x < o + n for x, o, n in zip(lead, c.offsets, c.sizes, strict=False))
        ]
        for a in range(0, shape[d], step):
            b = min(shape[d], a + step)
            pieces = []
            for c in mine:
                lo, hi = max(a, c.offsets[d]), min(b, c.offsets[d] + c.sizes[d])
                if lo >= hi:
                    continue
                local = [x - o for x, o in zip(lead, c.offsets, strict=False)] + [lo - c.offsets[d]]
                start = _flat_index(local + [0] * (nd - d - 1), c.sizes)
                inner = c.sizes[d + 1 :]
                across = [slice(o, o + n) for o, n in zip(c.offsets[d + 1 :], inner, strict=True)]
                dest = (slice(lo - a, hi - a), *across)
                pieces.append(Piece(c.offsets, start, (hi - lo) * math.prod(inner), dest, (hi - lo, *inner)))
            yield (b - a, *shape[d + 1 :]), tuple(pieces)


def _ranges(chunk: tuple[int, ...], numel: int, step: int) -> list[Piece]:
    return [Piece(chunk, s, min(step, numel - s)) for s in range(0, numel, step)]


def record_work(plan: MergePlan, shard: int, index: int, rec: OutRecord) -> Iterator[Work]:
    """The blocks of one output record, in output byte order (``last_of_shard`` left False)."""
    if rec.is_item:
        yield Work(shard, index, rec.name, None, 0, (), None, True, True, False)
        return
    t = plan.tensor(rec.name)
    entry = plan.inputs[0].tensors[rec.name]
    step = plan.chunk_elems
    if rec.offsets is not None:  # one stored chunk, kept as is
        ranges = _ranges(rec.offsets, math.prod(rec.shape), step)
    elif entry.numel == 0:
        ranges = []
    elif rows_in_order(entry):
        ranges = [
            r
            for c in sorted(entry.chunks, key=lambda c: c.offsets)
            for r in _ranges(c.offsets, c.numel, step)
        ]
    else:
        blocks = list(interleaved_blocks(entry, step))
        for i, (shape, pieces) in enumerate(blocks):
            last = i == len(blocks) - 1
            yield Work(shard, index, rec.name, t, math.prod(shape), pieces, shape, i == 0, last, False)
        return
    if not ranges:  # an empty tensor: its record is still written, with no data
        yield Work(shard, index, rec.name, t, 0, (), None, True, True, False)
    for i, p in enumerate(ranges):
        yield Work(shard, index, rec.name, t, p.count, (p,), None, i == 0, i == len(ranges) - 1, False)


def work_items(plan: MergePlan, shard_indices: Sequence[int]) -> Iterator[Work]:
    for s in shard_indices:
        records = plan.records(plan.shards[s])
        pending: Work | None = None
        for r, rec in enumerate(records):
            for w in record_work(plan, s, r, rec):
                if pending is not None:
                    yield pending
                pending = w
        if pending is not None:
            yield replace(pending, last_of_shard=True)
