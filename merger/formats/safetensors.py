"""The safetensors format behind the merger's seam: header parsing, resolution, streaming writer.

Reading: we parse headers ourselves (8-byte little-endian length, then JSON) so that a plan reads a
few kilobytes per file instead of opening every tensor. A checkpoint is one ``.safetensors`` file,
shards listed by a Hugging Face ``model.safetensors.index.json``, or a directory holding either;
:func:`open_safetensors` turns it into a :class:`~merger.formats.base.CheckpointLayout` (each
tensor one chunk) reading only headers and the index.

Writing: names, dtypes and shapes fix every offset, so :class:`SafetensorsWriter` writes the header
first and then appends tensor bytes strictly in order as chunks complete; nothing is held back.
As an output format (:mod:`merger.formats.output`) every tensor is one record, written whole in
C order whatever the inputs' chunk layout; the index is the only metadata file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import posixpath
import struct
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from merger.errors import CorruptFileError, MergeError
from merger.formats.base import CheckpointLayout, FileInfo, TensorChunk, TensorEntry
from merger.formats.dtypes import DTYPES
from merger.formats.output import OutRecord
from merger.formats.sources import (
    FsspecSource,
    LocalSource,
    exists,
    join_uri,
    open_source,
    parent_uri,
    read_small,
)
from merger.writer import Sink
from wsm.store import layout

if TYPE_CHECKING:
    from merger.plan import MergePlan, ShardPlan

FORMAT = "safetensors"
OUT_FORMAT = "safetensors"
PRIORITY = 0
"""Detection order among formats (lower first): a directory with safetensors files is read as such."""
INDEX_NAME = layout.MODEL_INDEX_FILE
SINGLE_NAME = layout.MODEL_FILE

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

    header = build_header(
        parse_header(raw, source.uri), header_len, source.uri, hashlib.sha256(raw).hexdigest()
    )
    need = header.data_offset + header.data_size
    if size < need:
        raise CorruptFileError(
            f"{source.uri}: truncated: the header describes {need} bytes but the file has {size}"
        )
    return header


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


def _file_uris(
    uri: str, storage_options: Mapping[str, Any] | None
) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files behind ``uri`` (file, index json or directory) in a fixed order, and
    the index's tensor -> shard map when there is one."""
    if uri.endswith(".safetensors"):
        return [uri], None
    if not uri.endswith(".json"):
        index = join_uri(uri, INDEX_NAME)
        if exists(index, storage_options):
            uri = index
        elif exists(join_uri(uri, SINGLE_NAME), storage_options):
            return [join_uri(uri, SINGLE_NAME)], None
        else:
            raise MergeError(f"{uri}: neither {SINGLE_NAME} nor {INDEX_NAME} found there")
    try:
        index_obj = json.loads(read_small(uri, storage_options))
        weight_map = {str(k): str(v) for k, v in index_obj["weight_map"].items()}
        shards = sorted(set(weight_map.values()))
    except FileNotFoundError:
        raise MergeError(f"{uri}: no such file") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptFileError(f"{uri}: not a valid safetensors index ({exc!r})") from None
    base = parent_uri(uri)
    return [join_uri(base, s) for s in shards], weight_map


def _load_file(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[FileInfo, Header]:
    source = open_source(uri, storage_options)
    try:
        header = read_header(source)
        return FileInfo(uri=uri, size=source.size(), layout_sha256=header.raw_sha256), header
    except FileNotFoundError:
        raise MergeError(f"{uri}: no such file") from None
    finally:
        source.close()


def detect(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``uri`` names a safetensors checkpoint (file, index, or a directory holding one)."""
    if uri.endswith((".safetensors", ".json")):
        return True
    return exists(join_uri(uri, INDEX_NAME), storage_options) or exists(
        join_uri(uri, SINGLE_NAME), storage_options
    )


def open_checkpoint(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> CheckpointLayout:
    """Read the headers of every file of checkpoint ``uri`` and map each tensor to its bytes."""
    uri = str(uri)
    uris, weight_map = _file_uris(uri, storage_options)
    # Headers of remote shards are independent small requests: fetch them concurrently.
    with ThreadPoolExecutor(max_workers=min(8, len(uris))) as pool:
        loaded = list(pool.map(lambda u: _load_file(u, storage_options), uris))
    tensors: dict[str, TensorEntry] = {}
    owner: dict[str, int] = {}
    for i, (f, header) in enumerate(loaded):
        for name, info in header.tensors.items():
            if name in tensors:
                raise CorruptFileError(
                    f"{uri}: tensor {name!r} appears in both {loaded[owner[name]][0].uri} and {f.uri}"
                )
            chunk = TensorChunk(
                offsets=(0,) * len(info.shape),
                sizes=info.shape,
                file=i,
                byte_offset=header.data_offset + info.begin,
                nbytes=info.nbytes,
            )
            tensors[name] = TensorEntry(name, info.dtype, info.shape, (chunk,))
            owner[name] = i
    if not tensors:
        raise MergeError(f"{uri}: checkpoint holds no tensors")
    files = [f for f, _ in loaded]
    if weight_map is not None:
        # The index is what HF loaders trust: a tensor it maps to a shard lacking it is corruption.
        for name, shard in sorted(weight_map.items()):
            if name not in owner or posixpath.basename(files[owner[name]].uri.replace(os.sep, "/")) != shard:
                raise CorruptFileError(
                    f"{uri}: index maps tensor {name!r} to {shard}, which does not hold it"
                )
        for name in tensors:
            if name not in weight_map:
                raise CorruptFileError(f"{uri}: tensor {name!r} is in a shard but not in the index")
    return CheckpointLayout(
        uri=uri,
        format=FORMAT,
        files=files,
        tensors=tensors,
        metadata=dict(loaded[0][1].metadata),
        sha256=sha256,
        extra=dict(extra or {}),
        storage_options=dict(storage_options or {}),
    )


class SafetensorsWriter:
    """Writes one safetensors file into ``sink``: the header at once, then tensor bytes in order."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        entries: Sequence[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.sink = sink
        header, offsets = encode_header(list(entries), metadata or {})
        self.header = header
        self.size = len(header) + (offsets[-1][1] if offsets else 0)
        self._remaining = self.size - len(header)
        self.bytes_written = 0
        self._write(header)

    def _write(self, data: bytes | memoryview | Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self.sink.write(view)
            n = len(view) if n is None else n  # some file-likes return None for "all written"
            if n <= 0:
                raise OSError(f"{self.name}: write made no progress")
            view = view[n:]
            self.bytes_written += n

    def write(self, data: bytes | memoryview | Any) -> None:
        """Append tensor bytes; more than the header announced is a bug, so it raises."""
        n = memoryview(data).nbytes
        if n > self._remaining:
            raise RuntimeError(f"{self.name}: {n} bytes more than the header announced")
        self._remaining -= n
        self._write(data)

    def commit(self) -> None:
        """Check completeness, then make the file visible (rename / complete the upload)."""
        if self._remaining:
            self.sink.abort()
            raise RuntimeError(f"{self.name}: {self._remaining} bytes of tensor data missing")
        self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()


class SafetensorsFileWriter(SafetensorsWriter):
    """:class:`SafetensorsWriter` as an output format's file writer: records are tensors, in order."""

    def write_record(self, record: int, data: memoryview, *, first: bool, last: bool) -> None:
        self.write(data)


# -- the output format (merger/formats/output.py) -------------------------------------------------


def shard_name(index: int, count: int) -> str:
    """``model.safetensors``, or HF shard names when there are several files."""
    return SINGLE_NAME if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def _entries(plan: MergePlan, shard: ShardPlan) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(n, plan.tensor(n).out_dtype, plan.tensor(n).shape) for n in shard.tensors]


def records(plan: MergePlan, shard: ShardPlan) -> list[OutRecord]:
    return [OutRecord(n, dtype, shape) for n, dtype, shape in _entries(plan, shard)]


def file_size(plan: MergePlan, shard: ShardPlan) -> int:
    """Exact size of output file ``shard`` of ``plan``, known before writing it."""
    header, offsets = encode_header(_entries(plan, shard), dict(plan.metadata))
    return len(header) + (offsets[-1][1] if offsets else 0)


def open_file(plan: MergePlan, shard: ShardPlan, sink: Sink) -> SafetensorsFileWriter:
    return SafetensorsFileWriter(shard.filename, sink, _entries(plan, shard), dict(plan.metadata))


def metadata_files(plan: MergePlan, provenance: dict[str, Any]) -> dict[str, bytes]:
    """The HF index of a sharded output (nothing for one ``model.safetensors``)."""
    if len(plan.shards) == 1 and plan.shards[0].filename == SINGLE_NAME:
        return {}
    weight_map = {name: shard.filename for shard in plan.shards for name in shard.tensors}
    index = {"metadata": {"total_size": plan.output_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    return {INDEX_NAME: (json.dumps(index, indent=2) + "\n").encode()}
