"""The format seam: what the merge engine needs to know about a checkpoint, whatever its format.

A checkpoint format is one module in this package. Its reader turns a checkpoint reference (a
local path or an fsspec URI) into a :class:`CheckpointLayout`: every tensor with its dtype, its
global shape, and the chunks its bytes are stored in (file, absolute byte offset, length, and
where the chunk sits in the global tensor). The engine then reads only byte ranges of those files
(:mod:`merger.formats.sources`: mmap locally, ranged GETs remotely), so no format ever has to
deserialise a whole record or download a whole object.

A safetensors tensor is one chunk covering the whole tensor. A PyTorch DCP tensor (Megatron's
``torch_dist``, torchtitan, OLMo-core) has one chunk per shard a rank wrote. Non-tensor items
(Transformer Engine ``_extra_state``, pickled objects) are :class:`ByteItem`: copied, never averaged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from merger.formats.dtypes import DTYPES
from wsm.store.manifests import FileEntry


@dataclass(frozen=True)
class FileInfo:
    """One file of a checkpoint: where it is and how large it is (checked before any read)."""

    uri: str
    size: int
    layout_sha256: str = ""
    """sha256 of the file's own metadata (a safetensors header): a cheap identity of its layout."""
    entry: FileEntry | None = None
    """The store manifest's entry of the file (store checkpoints only): with checksums, every
    byte the merge reads is verified against it. Files outside the store have none."""

    @property
    def verifiable(self) -> bool:
        return self.entry is not None and self.entry.checksums is not None


@dataclass(frozen=True)
class TensorChunk:
    """A C-contiguous block of a tensor, stored as raw little-endian bytes in one file."""

    offsets: tuple[int, ...]
    """Position of the chunk's first element in the global tensor, per dimension."""
    sizes: tuple[int, ...]
    """Shape of the chunk."""
    file: int
    """Index into :attr:`CheckpointLayout.files`."""
    byte_offset: int
    """Absolute offset of the chunk's first data byte in that file."""
    nbytes: int
    """Length of the chunk's data: ``prod(sizes) * itemsize``."""

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a checkpoint: dtype (a safetensors code, e.g. ``BF16``), global shape, chunks."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[TensorChunk, ...]
    """Sorted by ``offsets``; together they tile the global tensor exactly once."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1]

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_float(self) -> bool:
        return DTYPES[self.dtype][2]

    def chunk_key(self) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
        """The chunk layout (offsets, sizes), independent of files: equal keys merge chunk by chunk."""
        return tuple((c.offsets, c.sizes) for c in self.chunks)


@dataclass(frozen=True)
class ByteItem:
    """A non-tensor item (pickled object, TE ``_extra_state``): a byte range copied verbatim."""

    name: str
    file: int
    byte_offset: int
    nbytes: int


@dataclass
class CheckpointLayout:
    """A resolved checkpoint: its files, every tensor and every non-tensor item.

    Building one reads metadata only (headers, ``.metadata``, record directories), never tensor
    data. ``format`` names the reader module that built it (``safetensors``, ``dcp``).
    """

    uri: str
    format: str
    files: list[FileInfo]
    tensors: dict[str, TensorEntry]
    items: dict[str, ByteItem] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    """Format-specific facts worth keeping (safetensors ``__metadata__``, Megatron arguments...)."""
    skipped: list[str] = field(default_factory=list)
    """Keys present in the checkpoint but deliberately not merged (optimizer, RNG state)."""
    sha256: str | None = None
    """sha256 of the weights when known without hashing (store checkpoints carry it in their manifest)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Provenance the caller attaches (store run/tokens, ...); copied into the merge manifest."""
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """fsspec options the files were resolved with."""

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
