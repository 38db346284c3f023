"""``torch.save`` records at the byte level: where a tensor's raw bytes sit inside one, by ranged reads.

PyTorch DCP's default writer stores every tensor chunk as a complete ``torch.save`` archive (a zip
whose members are STORED, i.e. uncompressed) inside a ``.distcp`` file. To merge without
deserialising whole records we find the raw bytes of the ``<prefix>/data/<key>`` member:

1. read the record's tail: the end-of-central-directory record (torch always adds the ZIP64 one),
   which says where the central directory is; read that too if the tail did not cover it;
2. read the record's head up to the data member's local header: it holds ``data.pkl`` (the
   tensor's storage dtype, shape, stride and storage key) and the local headers we need.

Local headers carry the data-descriptor flag, so their size fields are zero: sizes come from the
central directory (ZIP64 extra fields once a member reaches 4 GiB). The data offset is the local
header's end (``30 + name + extra`` bytes, the extra field pads data to 64 bytes from the record
start). Every check that fails raises a one-line :class:`CorruptFileError` naming file and record.

``data.pkl`` is read with an unpickler that only knows the handful of globals a tensor record uses
(it never imports or calls anything else); :func:`load_object_record` reads small object records
such as Megatron's ``common.pt`` with stand-ins for any class it does not know.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from merger.errors import CorruptFileError

Reader = Callable[[int, int], bytes]
"""``read(offset, length)``: exactly ``length`` bytes at an absolute file offset."""

TAIL_BYTES = 1024  # covers the end records and the central directory of a typical tensor record
MAX_HEAD_BYTES = 1 << 20  # data.pkl of one tensor is a few hundred bytes; more is not a DCP record
MAX_CD_BYTES = 1 << 20

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_STORED = 0

# Legacy typed storages name their dtype; newer dtypes use UntypedStorage + _rebuild_tensor_v3.
_LEGACY_STORAGES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class Member:
    """One central-directory entry; ``local_offset`` is relative to the record start."""

    name: str
    method: int
    size: int
    compressed_size: int
    local_offset: int


@dataclass(frozen=True)
class _Storage:
    dtype: torch.dtype | None  # None: an UntypedStorage (the dtype comes with the tensor)
    key: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


def _u16(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", b, at)[0])


def _u32(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", b, at)[0])


def _u64(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<Q", b, at)[0])


def _central_directory(read: Reader, start: int, length: int, where: str) -> list[Member]:
    """The members of the zip archive occupying ``[start, start + length)`` of the file."""
    if length < 22:
        raise CorruptFileError(f"{where}: {length} bytes is too short for a torch.save record")
    tail_len = min(length, TAIL_BYTES)
    tail_start = length - tail_len  # relative to the record
    tail = read(start + tail_start, tail_len)
    # torch writes no archive comment: the EOCD must be the last 22 bytes of the record.
    eocd = tail_len - 22
    if tail[eocd : eocd + 4] != _EOCD or _u16(tail, eocd + 20) != 0:
        raise CorruptFileError(
            f"{where}: not a torch.save zip record (no end-of-central-directory at its end)"
        )
    entries, cd_size, cd_offset = _u16(tail, eocd + 10), _u32(tail, eocd + 12), _u32(tail, eocd + 16)
    if entries == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):
        loc = eocd - 20
        if loc < 0 or tail[loc : loc + 4] != _ZIP64_LOCATOR:
            raise CorruptFileError(f"{where}: ZIP64 end-of-central-directory locator missing")
        z64 = _u64(tail, loc + 8)
        if z64 + 56 > length:
            raise CorruptFileError(
                f"{where}: ZIP64 end-of-central-directory offset {z64} is outside the record"
            )
        z = tail[z64 - tail_start : z64 - tail_start + 56] if z64 >= tail_start else read(start + z64, 56)
        if z[:4] != _ZIP64_EOCD:
            raise CorruptFileError(f"{where}: ZIP64 end-of-central-directory record missing")
        entries, cd_size, cd_offset = _u64(z, 32), _u64(z, 40), _u64(z, 48)
    if cd_offset + cd_size > length or cd_size > MAX_CD_BYTES:
        raise CorruptFileError(
            f"{where}: central directory [{cd_offset}, +{cd_size}) does not fit the {length}-byte record"
        )
    if cd_offset >= tail_start:
        cd = tail[cd_offset - tail_start : cd_offset - tail_start + cd_size]
    else:
        cd = read(start + cd_offset, cd_size)
    members: list[Member] = []
    pos = 0
    for _ in range(entries):
        if cd[pos : pos + 4] != _CENTRAL or pos + 46 > len(cd):
            raise CorruptFileError(f"{where}: central directory entry {len(members)} is malformed")
        method = _u16(cd, pos + 10)
        csize, usize = _u32(cd, pos + 20), _u32(cd, pos + 24)
        nlen, xlen, clen = _u16(cd, pos + 28), _u16(cd, pos + 30), _u16(cd, pos + 32)
        local = _u32(cd, pos + 42)
        name = cd[pos + 46 : pos + 46 + nlen].decode("utf-8", "replace")
        extra = cd[pos + 46 + nlen : pos + 46 + nlen + xlen]
        usize, csize, local = _zip64_extra(extra, usize, csize, local)
        members.append(Member(name, method, usize, csize, local))
        pos += 46 + nlen + xlen + clen
    return members


def _zip64_extra(extra: bytes, usize: int, csize: int, local: int) -> tuple[int, int, int]:
    """Replace saturated 32-bit fields with their ZIP64 extra-field values (in the zip spec's order)."""
    at = 0
    while at + 4 <= len(extra):
        tag, size = _u16(extra, at), _u16(extra, at + 2)
        if tag == 0x0001:
            field = at + 4
            if usize == 0xFFFFFFFF:
                usize, field = _u64(extra, field), field + 8
            if csize == 0xFFFFFFFF:
                csize, field = _u64(extra, field), field + 8
            if local == 0xFFFFFFFF:
                local = _u64(extra, field)
            break
        at += 4 + size
    return usize, csize, local


def _local_data_offset(head: bytes, member: Member, where: str) -> int:
    """Offset (relative to the record) of ``member``'s data, from its local file header in ``head``."""
    at = member.local_offset
    if at + 30 > len(head) or head[at : at + 4] != _LOCAL:
        raise CorruptFileError(f"{where}: member {member.name!r} has no local file header")
    if _u16(head, at + 8) != _STORED or member.method != _STORED:
        raise CorruptFileError(f"{where}: member {member.name!r} is compressed; only STORED records are read")
    nlen, xlen = _u16(head, at + 26), _u16(head, at + 28)
    if head[at + 30 : at + 30 + nlen].decode("utf-8", "replace") != member.name:
        raise CorruptFileError(f"{where}: local header of {member.name!r} names another member")
    return at + 30 + nlen + xlen


class _TensorUnpickler(pickle.Unpickler):
    """Reads ``data.pkl`` of a tensor record without importing or calling anything but stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3"):
            return _rebuild_v3 if name.endswith("v3") else _rebuild_v2
        if module == "torch" and name in _LEGACY_STORAGES:
            return _LEGACY_STORAGES[name]
        if module == "torch.storage" and name == "UntypedStorage":
            return None
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return _Storage(dtype=pid[1], key=str(pid[2]), numel=int(pid[4]))


def _rebuild_v2(storage: _Storage, offset: int, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    if storage.dtype is None:
        raise pickle.UnpicklingError("untyped storage without a dtype")
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride), storage.dtype)


def _rebuild_v3(
    storage: _Storage, offset: int, size: Any, stride: Any, grad: Any, hooks: Any, dtype: Any, *rest: Any
) -> _TensorRef:
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"dtype {dtype!r} is not a torch dtype")
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride), dtype)


def _is_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def locate_tensor(
    read: Reader, start: int, length: int, *, where: str, dtype: torch.dtype, sizes: tuple[int, ...]
) -> int:
    """Absolute file offset of the raw bytes of the tensor stored in the record ``[start, +length)``.

    The record must be a ``torch.save`` of one C-contiguous tensor of ``dtype`` and shape ``sizes``
    whose data member is stored uncompressed; the data then spans ``prod(sizes) * itemsize`` bytes.
    """
    members = _central_directory(read, start, length, where)
    by_name = {m.name: m for m in members}
    pkl = next((m for m in members if m.name.endswith("/data.pkl") and m.name.count("/") == 1), None)
    if pkl is None:
        raise CorruptFileError(f"{where}: record has no data.pkl member (not a torch.save record)")
    prefix = pkl.name[: -len("data.pkl")]
    data_members = [m for m in members if m.name.startswith(prefix + "data/")]
    if len(data_members) != 1:
        raise CorruptFileError(
            f"{where}: record holds {len(data_members)} storages, not one tensor (a non-tensor record?)"
        )
    data = data_members[0]
    head_len = data.local_offset + 30 + len(data.name.encode())
    if pkl.local_offset >= data.local_offset or head_len > min(length, MAX_HEAD_BYTES):
        raise CorruptFileError(f"{where}: unexpected member layout (data.pkl must precede the data)")
    head = read(start, head_len)
    pkl_at = _local_data_offset(head, pkl, where)
    raw_pkl = head[pkl_at : pkl_at + pkl.size]
    if len(raw_pkl) != pkl.size:
        raise CorruptFileError(f"{where}: data.pkl overlaps the data member")
    try:
        ref = _TensorUnpickler(io.BytesIO(raw_pkl)).load()
    except Exception as exc:  # any malformed pickle is the same problem to the caller
        raise CorruptFileError(f"{where}: data.pkl does not describe one tensor ({exc})") from None
    if not isinstance(ref, _TensorRef):
        raise CorruptFileError(f"{where}: record holds a {type(ref).__name__}, not a tensor")
    order = by_name.get(prefix + "byteorder")
    if order is not None and order.local_offset < data.local_offset:
        at = _local_data_offset(head, order, where)
        if head[at : at + order.size] != b"little":
            raise CorruptFileError(f"{where}: record was written big-endian")
    data_at = _local_data_offset(head, data, where)
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(sizes) * itemsize
    if ref.dtype != dtype:
        raise CorruptFileError(f"{where}: record holds {ref.dtype}, metadata says {dtype}")
    if ref.size != tuple(sizes):
        raise CorruptFileError(f"{where}: record holds shape {list(ref.size)}, metadata says {list(sizes)}")
    if ref.storage_offset != 0 or not _is_contiguous(ref.size, ref.stride):
        raise CorruptFileError(
            f"{where}: tensor is not C-contiguous from its storage start (offset {ref.storage_offset}, "
            f"stride {list(ref.stride)})"
        )
    if data.name != f"{prefix}data/{ref.storage.key}":
        raise CorruptFileError(
            f"{where}: data.pkl names storage {ref.storage.key!r}, record has {data.name!r}"
        )
    if data.size != nbytes or data.compressed_size != nbytes:
        raise CorruptFileError(
            f"{where}: data member holds {data.size} bytes, shape {list(sizes)} of {dtype} needs {nbytes}"
        )
    if data_at + nbytes > length:
        raise CorruptFileError(f"{where}: data runs past the end of the record")
    return start + data_at


class Opaque:
    """Stand-in for a class :func:`load_object_record` does not import: keeps its name and arguments."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        args = ", ".join(repr(a) for a in self.args)
        return f"{self.qualname}({args})"


class _ObjectUnpickler(pickle.Unpickler):
    """Unpickles plain data; every other global becomes an :class:`Opaque` stand-in, tensors ``None``."""

    _SAFE: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("argparse", "Namespace"),
            ("collections", "OrderedDict"),
            ("builtins", "set"),
            ("builtins", "frozenset"),
            ("builtins", "slice"),
            ("builtins", "complex"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(name, (Opaque,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        return None


def load_object_record(raw: bytes, where: str) -> Any:
    """The object pickled in a whole small ``torch.save`` file, without importing its classes."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) != 1:
                raise CorruptFileError(f"{where}: not a torch.save archive (no data.pkl)")
            return _ObjectUnpickler(io.BytesIO(zf.read(names[0]))).load()
    except CorruptFileError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"{where}: not a readable torch.save archive ({exc})") from None
