"""The safetensors format at the byte level: the dtype table, header parsing, ranged data reads.

We parse headers ourselves (8-byte little-endian length, then JSON) so that validation reads a
few kilobytes per file instead of opening every tensor, and so that the same code serves local
files (mmap, zero-copy) and remote objects (fsspec ranged reads: never a whole-object download).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from merger.errors import CorruptFileError

from merger.formats.dtypes import CODE_TO_NAME, DTYPE_NAMES, DTYPES, TORCH_TO_CODE  # noqa: F401 (re-exported)

# A header beyond this is not a real checkpoint (the reference implementation caps at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a header; offsets are relative to the start of the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1]

    @property
    def is_float(self) -> bool:
        return DTYPES[self.dtype][2]


@dataclass(frozen=True)
class Header:
    """A parsed safetensors header: tensors in data order, metadata and where data starts."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_offset: int
    """Absolute file offset of the data section (8 + header length)."""
    raw_sha256: str = field(default="", compare=False)
    """sha256 of the header bytes: a cheap identity of the file's layout."""

    @property
    def data_size(self) -> int:
        return max((t.end for t in self.tensors.values()), default=0)


def parse_header(raw: bytes, source: str) -> dict[str, Any]:
    """Decode the JSON header, naming ``source`` in every error."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{source}: header is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{source}: header is not a JSON object")
    return obj


def build_header(obj: dict[str, Any], header_len: int, source: str, raw_sha256: str = "") -> Header:
    """Check every entry (dtype known, shape and offsets consistent) and build a :class:`Header`."""
    metadata = obj.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CorruptFileError(f"{source}: __metadata__ is not an object")
    tensors: list[TensorInfo] = []
    for name, entry in obj.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{source}: tensor {name!r} has a malformed header entry") from None
        if dtype not in DTYPES:
            raise CorruptFileError(f"{source}: tensor {name!r} has unsupported dtype {dtype!r}")
        info = TensorInfo(name, dtype, shape, begin, end)
        if any(d < 0 for d in shape) or begin < 0 or end < begin:
            raise CorruptFileError(f"{source}: tensor {name!r} has invalid shape or offsets")
        if info.nbytes != info.numel * info.itemsize:
            raise CorruptFileError(
                f"{source}: tensor {name!r} spans {info.nbytes} bytes but shape {list(shape)} "
                f"of {dtype} needs {info.numel * info.itemsize}"
            )
        tensors.append(info)
    tensors.sort(key=lambda t: (t.begin, t.end, t.name))
    for prev, cur in itertools.pairwise(tensors):
        if cur.begin < prev.end:
            raise CorruptFileError(f"{source}: tensors {prev.name!r} and {cur.name!r} overlap")
    return Header(
        tensors={t.name: t for t in tensors},
        metadata={str(k): str(v) for k, v in metadata.items()},
        data_offset=8 + header_len,
        raw_sha256=raw_sha256,
    )


class ByteSource(Protocol):
    """Random access to one file's bytes; implementations must be safe to call from threads."""

    uri: str

    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> memoryview: ...

    def close(self) -> None: ...


class LocalSource:
    """A local file read through mmap: a read is a zero-copy view of the page cache."""

    def __init__(self, path: str) -> None:
        self.uri = path
        self._size = os.path.getsize(path)
        self._mm: mmap.mmap | None = None
        self._lock = threading.Lock()

    def size(self) -> int:
        return self._size

    def _map(self) -> mmap.mmap:
        with self._lock:
            if self._mm is None:
                with open(self.uri, "rb") as f:
                    # ACCESS_COPY gives a writable buffer (torch.frombuffer warns on read-only
                    # ones) without ever writing: no page is copied unless written, and we never do.
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                if hasattr(mmap, "MADV_SEQUENTIAL"):
                    self._mm.madvise(mmap.MADV_SEQUENTIAL)
            return self._mm

    def read(self, offset: int, length: int) -> memoryview:
        if offset + length > self._size:
            raise CorruptFileError(
                f"{self.uri}: truncated: wanted bytes up to {offset + length}, file has {self._size}"
            )
        if length == 0:
            return memoryview(b"")
        mm = self._map()
        view = memoryview(mm)[offset : offset + length]
        if hasattr(mmap, "MADV_WILLNEED"):
            # Ask the kernel to start paging in now: the prefetch thread calls read() ahead of use.
            page = mmap.PAGESIZE
            start = offset - offset % page
            mm.madvise(mmap.MADV_WILLNEED, start, min(length + offset - start, self._size - start))
        return view

    def release(self, offset: int, length: int) -> None:
        """Unmap consumed pages from this process (they stay in the page cache): keeps RSS flat."""
        mm = self._mm
        if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = -(-offset // page) * page
        end = min((offset + length) // page * page, self._size // page * page)
        if end > start:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def read_header_bytes(self, offset: int, length: int) -> bytes:
        """Small reads (the header) use plain file I/O so validation never maps a file."""
        with open(self.uri, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def close(self) -> None:
        with self._lock:
            if self._mm is not None:
                # Views handed out may still be alive (e.g. held by an exception traceback);
                # the map is then released when they are collected.
                with contextlib.suppress(BufferError):
                    self._mm.close()
                self._mm = None


class FsspecSource:
    """An object in any fsspec filesystem, read only in byte ranges (``cat_file(path, start, end)``)."""

    def __init__(self, fs: Any, path: str, uri: str, size: int | None = None) -> None:
        self.fs = fs
        self.path = path
        self.uri = uri
        self._size = size

    def size(self) -> int:
        if self._size is None:
            self._size = int(self.fs.size(self.path))
        return self._size

    def read(self, offset: int, length: int) -> memoryview:
        if offset + length > self.size():
            raise CorruptFileError(
                f"{self.uri}: truncated: wanted bytes up to {offset + length}, object has {self.size()}"
            )
        if length == 0:
            return memoryview(b"")
        data = self.fs.cat_file(self.path, start=offset, end=offset + length)
        if len(data) != length:
            raise CorruptFileError(f"{self.uri}: short read at {offset}: got {len(data)} of {length} bytes")
        # bytearray: torch.frombuffer needs a writable buffer to avoid a warning.
        return memoryview(bytearray(data))

    def read_header_bytes(self, offset: int, length: int) -> bytes:
        return bytes(self.read(offset, length))

    def close(self) -> None:
        pass


def read_header(source: LocalSource | FsspecSource) -> Header:
    """Read and validate the header with two small ranged reads; checks the file is long enough."""
    size = source.size()
    if size < 8:
        raise CorruptFileError(f"{source.uri}: {size} bytes is too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", source.read_header_bytes(0, 8))
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise CorruptFileError(
            f"{source.uri}: header length {header_len} is impossible for a file of {size} bytes "
            "(not a safetensors file, or truncated)"
        )
    raw = source.read_header_bytes(8, header_len)
    import hashlib

    header = build_header(
        parse_header(raw, source.uri), header_len, source.uri, hashlib.sha256(raw).hexdigest()
    )
    need = header.data_offset + header.data_size
    if size < need:
        raise CorruptFileError(
            f"{source.uri}: truncated: the header describes {need} bytes but the file has {size}"
        )
    return header


def tensor_view(buf: memoryview, dtype: str) -> torch.Tensor:
    """A 1-D tensor over raw little-endian bytes, without copying (bf16 included: numpy lacks it)."""
    tdtype = DTYPES[dtype][0]
    if len(buf) == 0:
        return torch.empty(0, dtype=tdtype)
    return torch.frombuffer(buf, dtype=tdtype)


def encode_header(
    entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]
) -> tuple[bytes, list[tuple[int, int]]]:
    """Header bytes (length prefix included, padded to 8) and data offsets for tensors in order."""
    obj: dict[str, Any] = {}
    if metadata:
        obj["__metadata__"] = metadata
    offsets: list[tuple[int, int]] = []
    pos = 0
    for name, dtype, shape in entries:
        n = DTYPES[dtype][1]
        for d in shape:
            n *= d
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        offsets.append((pos, pos + n))
        pos += n
    raw = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    # The format pads the header with spaces so the data section starts 8-byte aligned.
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offsets
