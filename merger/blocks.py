"""What each step of a merge reads and where its result goes: the blocks of every output record.

An output file is a list of records (:meth:`merger.plan.MergePlan.records`); the engine merges
each record in blocks of at most ``plan.chunk_elems`` elements, in output byte order:

- a record that is one stored chunk (``torch_dist`` keeps the inputs' chunk layout): consecutive
  ranges of that chunk, found in every input by the chunk's offsets;
- a whole tensor whose chunks are slabs along dimension 0 in order (one safetensors tensor, a
  Megatron embedding split by rows): consecutive ranges of each chunk in turn;
- a whole tensor whose chunks are cut along other dimensions (a tensor-parallel row-parallel
  weight split along dimension 1): blocks of the C-contiguous tensor, each assembled from one
  contiguous range of every chunk it crosses, merged piece by piece and interleaved into place
  with a strided copy (:func:`interleaved_blocks`). Memory stays one block, whatever the layout;
- one layer of a Megatron layer-stacked tensor (safetensors output of Megatron inputs: see
  :func:`merger.formats.megatron_names.per_layer_names`): the same, within row ``layer`` of it;
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


@dataclass(frozen=True)
class _View:
    """A stored chunk as seen from the region being written: a whole tensor, or one layer of it."""

    key: tuple[int, ...]
    """The stored chunk's offsets in the global tensor: how every input finds it."""
    base: int
    """Element of the stored chunk where the region's part of it starts."""
    offsets: tuple[int, ...]
    """Within the region."""
    sizes: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


def _views(entry: TensorEntry, layer: int | None) -> tuple[tuple[int, ...], list[_View]]:
    """The region's shape and the chunks crossing it: the whole tensor, or its row ``layer``
    (a Megatron layer-stacked tensor written one layer per output tensor)."""
    chunks = sorted(entry.chunks, key=lambda c: c.offsets)
    if layer is None:
        return entry.shape, [_View(c.offsets, 0, c.offsets, c.sizes) for c in chunks]
    views = [
        _View(c.offsets, (layer - c.offsets[0]) * math.prod(c.sizes[1:]), c.offsets[1:], c.sizes[1:])
        for c in chunks
        if c.offsets[0] <= layer < c.offsets[0] + c.sizes[0]
    ]
    return entry.shape[1:], views


def rows_in_order(shape: tuple[int, ...], views: Sequence[_View]) -> bool:
    """Whether the chunks, in offsets order, are consecutive slabs along dimension 0: their bytes
    concatenate to the region in C order, so it is merged chunk by chunk as is."""
    if not shape:
        return len(views) == 1
    row = 0
    for v in views:
        if v.offsets != (row,) + (0,) * (len(shape) - 1) or v.sizes[1:] != shape[1:]:
            return False
        row += v.sizes[0]
    return row == shape[0]


def _flat_index(index: Sequence[int], sizes: Sequence[int]) -> int:
    flat = 0
    for i, n in zip(index, sizes, strict=True):
        flat = flat * n + i
    return flat


def interleaved_blocks(
    shape: tuple[int, ...], views: Sequence[_View], limit: int
) -> Iterator[tuple[tuple[int, ...], tuple[Piece, ...]]]:
    """Blocks of the C-contiguous region assembled from chunks cut along any dimensions.

    A block fixes the indices of dimensions ``< d`` and takes a range of dimension ``d`` and all
    of the following ones, ``d`` being the first dimension whose trailing elements fit ``limit``.
    Each chunk it crosses contributes one contiguous range of its own storage (its full extent
    along the trailing dimensions), merged as one piece and copied into the block at its offsets.
    """
    nd = len(shape)
    d = next(i for i in range(nd) if math.prod(shape[i + 1 :]) <= limit)
    step = max(1, limit // math.prod(shape[d + 1 :]))
    for lead in itertools.product(*(range(n) for n in shape[:d])):
        mine = [
            v for v in views if all(o <= x < o + n for x, o, n in zip(lead, v.offsets, v.sizes, strict=False))
        ]
        for a in range(0, shape[d], step):
            b = min(shape[d], a + step)
            pieces = []
            for v in mine:
                lo, hi = max(a, v.offsets[d]), min(b, v.offsets[d] + v.sizes[d])
                if lo >= hi:
                    continue
                local = [x - o for x, o in zip(lead, v.offsets, strict=False)] + [lo - v.offsets[d]]
                start = v.base + _flat_index(local + [0] * (nd - d - 1), v.sizes)
                inner = v.sizes[d + 1 :]
                across = [slice(o, o + n) for o, n in zip(v.offsets[d + 1 :], inner, strict=True)]
                dest = (slice(lo - a, hi - a), *across)
                pieces.append(Piece(v.key, start, (hi - lo) * math.prod(inner), dest, (hi - lo, *inner)))
            yield (b - a, *shape[d + 1 :]), tuple(pieces)


def _ranges(key: tuple[int, ...], base: int, numel: int, step: int) -> list[Piece]:
    return [Piece(key, base + s, min(step, numel - s)) for s in range(0, numel, step)]


def record_work(plan: MergePlan, shard: int, index: int, rec: OutRecord) -> Iterator[Work]:
    """The blocks of one output record, in output byte order (``last_of_shard`` left False)."""
    if rec.is_item:
        yield Work(shard, index, rec.name, None, 0, (), None, True, True, False)
        return
    t = plan.tensor(rec.name)
    step = plan.chunk_elems
    shape, views = _views(plan.inputs[0].tensors[t.src], t.layer)
    if rec.offsets is not None:  # one stored chunk, kept as is
        ranges = _ranges(rec.offsets, 0, math.prod(rec.shape), step)
    elif math.prod(shape) == 0:
        ranges = []
    elif rows_in_order(shape, views):
        ranges = [r for v in views for r in _ranges(v.key, v.base, v.numel, step)]
    else:
        blocks = list(interleaved_blocks(shape, views, step))
        for i, (block, pieces) in enumerate(blocks):
            last = i == len(blocks) - 1
            yield Work(shard, index, rec.name, t, math.prod(block), pieces, block, i == 0, last, False)
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
