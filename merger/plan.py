"""Planning a merge: validate everything that can be checked from metadata, then fix the layout.

:func:`plan_merge` reads only metadata (headers, DCP ``.metadata`` and record headers), before any
output byte exists. It checks the weights, and that every checkpoint has the same tensor names,
shapes, dtypes and chunk layout (chunk lists compared as sets: writers emit the same chunks in any
order) and the same byte items, naming the first mismatch (file, tensor, what differs); files too
short for their records are refused when they are opened. It then decides the output: its format
(``safetensors`` or ``torch_dist``), tensor order, dtypes, files and chunking.

Policy: floating tensors are averaged; non-floating tensors (token ids, masks, counters) and byte
items (Transformer Engine ``_extra_state``) are copied from the **newest** checkpoint, never
averaged, whatever the input format (:attr:`MergePlan.newest`: the highest step when every input
knows its step, else the last input). Optimizer and RNG state are never merged (the DCP reader
skips them; :attr:`MergePlan.skipped` lists them for the manifest).

A :class:`MergePlan` is plain data (``to_dict``/``from_dict``) so a task queue can ship it, and it
splits into byte-balanced parts (:meth:`MergePlan.split`) that separate workers execute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from merger.errors import MergeError, MismatchError, WeightError
from merger.formats import CheckpointLayout, TensorEntry, open_checkpoint
from merger.formats.dtypes import CODE_TO_NAME, DTYPE_NAMES, DTYPES
from merger.formats.output import OutRecord, check_out_format, output_module
from merger.formats.safetensors import SINGLE_NAME
from merger.provenance import AnnealSelection

WEIGHT_TOLERANCE = 1e-6
"""|sum(c) - 1| allowed: weights derived in float64 from a curve sum to 1 up to rounding."""
DEFAULT_CHUNK_BYTES = 64 * 2**20
"""Largest accumulator slice: a huge embedding is merged in slices of at most this many bytes."""
DEFAULT_INFLIGHT_BYTES = 256 * 2**20
"""Input bytes of one chunk across all checkpoints: bounds memory for remote (buffered) inputs."""


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: shape, input dtype, output dtype, and whether it is averaged."""

    name: str
    shape: tuple[int, ...]
    in_dtype: str
    out_dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return DTYPES[self.in_dtype][2]

    @property
    def in_nbytes(self) -> int:
        return self.numel * DTYPES[self.in_dtype][1]

    @property
    def out_nbytes(self) -> int:
        return self.numel * DTYPES[self.out_dtype][1]


@dataclass(frozen=True)
class ShardPlan:
    """One output file and the tensors (then byte items) it holds, in write order."""

    filename: str
    tensors: tuple[str, ...]
    items: tuple[str, ...] = ()
    """Byte items (``torch_dist`` output only), copied from the newest checkpoint after the tensors."""


@dataclass(frozen=True)
class MergePlan:
    """Everything needed to execute a merge, validated; JSON-serialisable via :meth:`to_dict`."""

    inputs: tuple[CheckpointLayout, ...]
    weights: tuple[float, ...]
    tensors: tuple[TensorPlan, ...]
    shards: tuple[ShardPlan, ...]
    accumulate: str = "float32"
    chunk_elems: int = DEFAULT_CHUNK_BYTES // 4
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=lambda: {"format": "pt"})
    selection: AnnealSelection | None = None
    """For a merge of a run's window: run, curve, window and sources; copied into the manifest."""
    allow_nonfinite: bool = False
    """Publish even if an input or the output holds NaN or Inf (else the merge fails naming the tensor)."""
    out_format: str = "safetensors"
    """``safetensors`` (one file or HF shards + index) or ``torch_dist`` (a DCP directory)."""
    newest: int = -1
    """Index of the input that non-floating tensors and byte items are copied from (-1: the last)."""

    @property
    def newest_input(self) -> CheckpointLayout:
        return self.inputs[self.newest]

    @property
    def sharded(self) -> bool:
        """Whether the output is several files (safetensors: HF shards plus an index)."""
        return len(self.shards) > 1 or self.shards[0].filename != SINGLE_NAME

    @property
    def bytes_to_read(self) -> int:
        return self.read_bytes(self.tensors, [i for s in self.shards for i in s.items])

    def read_bytes(self, tensors: Sequence[TensorPlan], items: Sequence[str]) -> int:
        """Input bytes a merge of ``tensors`` and ``items`` reads: float tensors from every
        checkpoint, non-float tensors and items from the newest only."""
        n = len(self.inputs)
        total = sum(t.in_nbytes * (n if t.is_float else 1) for t in tensors)
        return total + sum(self.newest_input.items[i].nbytes for i in items)

    @property
    def skipped(self) -> list[str]:
        """Keys of the inputs deliberately not merged (optimizer, RNG, training state), sorted."""
        return sorted({k for ck in self.inputs for k in ck.skipped})

    @property
    def dropped_items(self) -> list[str]:
        """Byte items of the inputs the output cannot hold (safetensors has no place for them)."""
        written = {i for s in self.shards for i in s.items}
        return sorted(k for k in self.newest_input.items if k not in written)

    @property
    def output_bytes(self) -> int:
        return sum(t.out_nbytes for t in self.tensors)

    @property
    def main_dtype(self) -> str:
        """Output dtype (``bfloat16``...) of most float bytes: a bf16 model may keep fp32 norms."""
        by_dtype: dict[str, int] = {}
        for t in self.tensors:
            if t.is_float:
                by_dtype[t.out_dtype] = by_dtype.get(t.out_dtype, 0) + t.out_nbytes
        code = max(sorted(by_dtype), key=lambda d: by_dtype[d]) if by_dtype else "F32"
        return CODE_TO_NAME.get(code, code.lower())

    def tensor(self, name: str) -> TensorPlan:
        return self._by_name()[name]

    def _by_name(self) -> dict[str, TensorPlan]:
        return {t.name: t for t in self.tensors}

    def shard_bytes(self, shard: ShardPlan) -> int:
        by_name = self._by_name()
        return sum(by_name[n].out_nbytes for n in shard.tensors)

    def shard_file_size(self, shard: ShardPlan) -> int:
        """Exact size of the shard's file (headers and record framing included), known before writing it."""
        return int(output_module(self.out_format).file_size(self, shard))

    def records(self, shard: ShardPlan) -> list[OutRecord]:
        """The records of one output file, in write order (see :mod:`merger.formats.output`)."""
        out: list[OutRecord] = output_module(self.out_format).records(self, shard)
        return out

    def resharded(self, num_shards: int) -> MergePlan:
        """The same merge written as ``num_shards`` byte-balanced shards (fewer if tensors are few)."""
        groups = _balanced_groups([t.out_nbytes for t in self.tensors], num_shards)
        names = [t.name for t in self.tensors]
        items = tuple(i for s in self.shards for i in s.items)
        return replace(
            self, shards=_shards_from_groups([[names[i] for i in g] for g in groups], self.out_format, items)
        )

    def split(self, n: int) -> list[MergePart]:
        """Byte-balanced parts, each writing whole output shards, for parallel workers.

        If the plan has fewer shards than ``n`` it is first resharded into ``n`` shards, so the
        parts belong to ``parts[0].plan`` (the same for every part): execute that plan in one
        process and you get the same files, bit for bit. At most ``n`` parts come back.
        """
        if n < 1:
            raise MergeError(f"cannot split a merge into {n} parts")
        plan = self if len(self.shards) >= n else self.resharded(n)
        groups = _balanced_groups([plan.shard_bytes(s) for s in plan.shards], n)
        return [MergePart(plan, i, tuple(g)) for i, g in enumerate(groups)]

    def describe(self) -> dict[str, Any]:
        """A JSON summary for ``--dry-run``: checkpoints, weights, bytes to read, output layout."""
        return {
            "checkpoints": [
                {
                    "uri": c.uri,
                    "c": w,
                    "files": len(c.files),
                    "bytes": c.nbytes,
                    "checksums": all(f.verifiable for f in c.files),
                    **c.extra,
                }
                for c, w in zip(self.inputs, self.weights, strict=True)
            ],
            "tensors": len(self.tensors),
            "bytes_to_read": self.bytes_to_read,
            "output_bytes": self.output_bytes,
            "output_format": self.out_format,
            "output_files": [s.filename for s in self.shards],
            "output_dtypes": sorted({t.out_dtype for t in self.tensors}),
            "accumulate": self.accumulate,
            "allow_nonfinite": self.allow_nonfinite,
            "copied_from": self.newest_input.uri,
            "skipped": len(self.skipped),
            "dropped_items": len(self.dropped_items),
            **({"selection": self.selection.model_dump(mode="json")} if self.selection else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        from merger.plan_codec import plan_to_dict

        return plan_to_dict(self)

    @staticmethod
    def from_dict(obj: Mapping[str, Any]) -> MergePlan:
        from merger.plan_codec import plan_from_dict

        return plan_from_dict(obj)


@dataclass(frozen=True)
class MergePart:
    """Part ``index`` of a split plan: the output shards (indices into ``plan.shards``) it writes."""

    plan: MergePlan
    index: int
    shard_indices: tuple[int, ...]

    @property
    def tensors(self) -> list[TensorPlan]:
        by_name = {t.name: t for t in self.plan.tensors}
        return [by_name[n] for i in self.shard_indices for n in self.plan.shards[i].tensors]

    @property
    def items(self) -> list[str]:
        return [i for s in self.shard_indices for i in self.plan.shards[s].items]

    @property
    def bytes_to_read(self) -> int:
        return self.plan.read_bytes(self.tensors, self.items)


def _balanced_groups(sizes: Sequence[int], n: int) -> list[list[int]]:
    """Split indices 0..len-1 into at most ``n`` contiguous non-empty groups of similar total size.

    Item i goes to the group its midpoint falls in (cumulative bytes scaled to n): contiguous,
    deterministic, and within one item's size of the ideal balance.
    """
    total = sum(sizes) or 1
    groups: list[list[int]] = [[] for _ in range(max(1, n))]
    pos = 0
    for i, s in enumerate(sizes):
        mid = pos + s / 2
        groups[min(n - 1, int(mid * n / total))].append(i)
        pos += s
    return [g for g in groups if g]


def _shards_from_groups(
    groups: list[list[str]], out_format: str, items: Sequence[str] = ()
) -> tuple[ShardPlan, ...]:
    """Files named by the output format; byte items go to the first file (they are small)."""
    module = output_module(out_format)
    n = len(groups)
    return tuple(
        ShardPlan(module.shard_name(i, n), tuple(g), tuple(items) if i == 0 else ())
        for i, g in enumerate(groups)
    )


def _layout(
    tensors: Sequence[TensorPlan], max_shard_bytes: int | None, out_format: str, items: Sequence[str]
) -> tuple[ShardPlan, ...]:
    """Greedy HF-style sharding: start a new shard when the next tensor would overflow this one."""
    if max_shard_bytes is None:
        return _shards_from_groups([[t.name for t in tensors]], out_format, items)
    if max_shard_bytes <= 0:
        raise MergeError(f"max shard size must be positive, got {max_shard_bytes}")
    groups: list[list[str]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.out_nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t.name)
        size += t.out_nbytes
    return _shards_from_groups(groups, out_format, items)


def validate_weights(weights: Sequence[float], count: int, tolerance: float = WEIGHT_TOLERANCE) -> None:
    """Weights must be finite, non-negative, one per checkpoint, and sum to 1."""
    if len(weights) != count:
        raise WeightError(f"{len(weights)} weights for {count} checkpoints")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise WeightError(f"weight {i} ({w!r}) is not a finite number")
        if w < 0:
            raise WeightError(f"weight {i} is negative ({w}); merge weights must be >= 0")
    total = math.fsum(weights)
    if abs(total - 1.0) > tolerance:
        raise WeightError(f"weights sum to {total:.9g}, not 1 (tolerance {tolerance:g})")


def _where(ck: CheckpointLayout, name: str) -> str:
    return ck.files[ck.tensors[name].chunks[0].file].uri


def _check_same_tensors(ckpts: Sequence[CheckpointLayout]) -> None:
    """Name the first difference in names, shapes, dtypes, chunk layout or byte items between a
    checkpoint and the first. Chunk lists are compared as sets: the same chunks in another order
    are the same layout (the engine finds each input's chunk by its offsets)."""
    ref = ckpts[0]
    for ck in ckpts[1:]:
        missing = [n for n in ref.tensors if n not in ck.tensors]
        if missing:
            raise MismatchError(f"{ck.uri}: tensor {missing[0]!r} (present in {ref.uri}) is missing")
        extra = [n for n in ck.tensors if n not in ref.tensors]
        if extra:
            raise MismatchError(f"{_where(ck, extra[0])}: tensor {extra[0]!r} is not in {ref.uri}")
        for name, a in ref.tensors.items():
            b: TensorEntry = ck.tensors[name]
            if a.shape != b.shape:
                raise MismatchError(
                    f"{_where(ck, name)}: tensor {name!r} has shape {list(b.shape)}, but {list(a.shape)} in {ref.uri}"
                )
            if a.dtype != b.dtype:
                raise MismatchError(
                    f"{_where(ck, name)}: tensor {name!r} has dtype {b.dtype}, but {a.dtype} in {ref.uri}"
                )
            if sorted(a.chunk_key()) != sorted(b.chunk_key()):
                raise MismatchError(
                    f"{_where(ck, name)}: tensor {name!r} is stored in chunks {sorted(b.chunk_key())}, "
                    f"but {sorted(a.chunk_key())} in {ref.uri}"
                )
        missing_items = sorted(set(ref.items) - set(ck.items))
        if missing_items:
            raise MismatchError(f"{ck.uri}: item {missing_items[0]!r} (present in {ref.uri}) is missing")
        extra_items = sorted(set(ck.items) - set(ref.items))
        if extra_items:
            raise MismatchError(f"{ck.uri}: item {extra_items[0]!r} is not in {ref.uri}")


def _step(ck: CheckpointLayout) -> int | None:
    """The training step of a checkpoint if it knows it: store tokens, or Megatron's iteration."""
    for value in (ck.extra.get("tokens"), ck.metadata.get("iteration")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def newest_index(ckpts: Sequence[CheckpointLayout]) -> int:
    """The newest input: the highest step when every input knows its step, else the last one."""
    steps = [_step(ck) for ck in ckpts]
    if all(s is not None for s in steps):
        known = [s for s in steps if s is not None]
        return max(range(len(ckpts)), key=lambda i: (known[i], i))
    return len(ckpts) - 1


def _out_dtype(in_dtype: str, requested: str | None) -> str:
    if requested is None or requested == "auto" or not DTYPES[in_dtype][2]:
        return in_dtype  # non-float tensors are copied unchanged whatever the output dtype
    return DTYPE_NAMES[requested]


def plan_merge(
    inputs: Sequence[str | Path | CheckpointLayout],
    weights: Sequence[float],
    *,
    out_dtype: str | None = None,
    accumulate: str = "float32",
    max_shard_bytes: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
    storage_options: Mapping[str, Any] | None = None,
    selection: AnnealSelection | None = None,
    tolerance: float = WEIGHT_TOLERANCE,
    allow_nonfinite: bool = False,
    out_format: str = "safetensors",
) -> MergePlan:
    """Validate a merge of ``inputs`` with ``weights`` (reading metadata only) and lay out the output.

    ``out_dtype``: None/"auto" keeps each tensor's input dtype; "float32", "bfloat16", "float16"
    or "float64" converts every floating tensor. ``accumulate``: "float32" or "float64".
    ``allow_nonfinite``: merge and publish even if inputs or output hold NaN or Inf.
    ``out_format``: "safetensors" (any input layout; tensors sharded along any dimension are
    assembled into C-contiguous tensors) or "torch_dist" (a DCP directory keeping the inputs'
    chunk layout, which Megatron's ``dist_checkpointing.load`` reads at any parallelism).
    """
    if not inputs:
        raise MergeError("nothing to merge: no checkpoints given")
    weights = [float(w) if isinstance(w, int) and not isinstance(w, bool) else w for w in weights]
    validate_weights(weights, len(inputs), tolerance)
    if out_dtype not in (None, "auto", *DTYPE_NAMES):
        raise MergeError(f"output dtype {out_dtype!r} is not one of auto, {', '.join(DTYPE_NAMES)}")
    if accumulate not in ("float32", "float64"):
        raise MergeError(f"accumulation dtype must be float32 or float64, not {accumulate!r}")
    check_out_format(out_format)
    if storage_options is None:
        # Refs resolved elsewhere (e.g. from the store) carry the options that reach their files.
        storage_options = next(
            (c.storage_options for c in inputs if isinstance(c, CheckpointLayout) and c.storage_options), {}
        )
    opts = dict(storage_options)
    ckpts = [c if isinstance(c, CheckpointLayout) else open_checkpoint(str(c), opts) for c in inputs]
    _check_same_tensors(ckpts)
    ref = ckpts[0]
    newest = newest_index(ckpts)
    # Byte items only fit a DCP output; safetensors has no place for them (the manifest lists them).
    items = sorted(ckpts[newest].items) if out_format == "torch_dist" else []
    # Output order = the first checkpoint's storage order, so reads of it are sequential.
    order = sorted(ref.tensors.values(), key=lambda e: (e.chunks[0].file, e.chunks[0].byte_offset))
    tensors = tuple(TensorPlan(e.name, e.shape, e.dtype, _out_dtype(e.dtype, out_dtype)) for e in order)
    # Chunk length in elements: the accumulator stays <= chunk_bytes and one chunk's inputs across
    # all checkpoints <= inflight_bytes, so memory does not grow with the checkpoint count.
    acc_size = 8 if accumulate == "float64" else 4
    widest = max(DTYPES[t.in_dtype][1] for t in tensors)
    chunk_elems = max(1024, min(chunk_bytes // acc_size, inflight_bytes // (len(ckpts) * widest)))
    return MergePlan(
        inputs=tuple(ckpts),
        weights=tuple(float(w) for w in weights),
        tensors=tensors,
        shards=_layout(tensors, max_shard_bytes, out_format, items),
        accumulate=accumulate,
        chunk_elems=chunk_elems,
        storage_options=opts,
        selection=selection,
        allow_nonfinite=bool(allow_nonfinite),
        out_format=out_format,
        newest=newest,
    )
