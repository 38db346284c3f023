"""Writing ``torch.save`` archives as a stream: what a DCP tensor record is, byte for byte.

``torch.save(tensor, f)`` writes a zip archive whose members are all STORED (see
:mod:`merger.formats.torch_record` for the reading side and docs/FORMATS.md). To write a record
whose tensor is produced chunk by chunk, never held whole, we write the same bytes ourselves:

- every member has a local header with the data-descriptor flag (``0x0808``: sizes and CRC come
  after the data) and an ``FB`` extra field of ``Z`` padding that starts its data 64-byte
  aligned relative to the archive start; an empty member has no descriptor (flag ``0x0800``);
- members in torch's order: ``data.pkl``, ``.format_version`` (``1``), ``.storage_alignment``
  (``64``), ``byteorder`` (``little``), ``data/0`` (the raw bytes), ``version`` (``3\\n``),
  ``.data/serialization_id`` (40 digits);
- the central directory, the ZIP64 end record and locator (torch always writes them), and the
  end-of-central-directory record without comment. Sizes and offsets of 4 GiB or more go to
  ZIP64 extra fields, as miniz (torch's zip library) writes them.

``data.pkl`` is the pickle torch writes for a C-contiguous tensor: ``_rebuild_tensor_v2`` with a
typed storage (``_rebuild_tensor_v3`` with an untyped one and the dtype for newer dtypes); a test
checks our bytes equal ``torch.save``'s for every dtype. The serialization id is derived from the
record's identity, so the same merge writes the same bytes whichever process writes it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

ALIGNMENT = 64
"""torch's ``.storage_alignment``: member data starts at a multiple of this from the archive start."""
_MAX32 = 0xFFFFFFFF
_FLAG_DESCRIPTOR = 0x0808  # bit 3: sizes in a data descriptor; bit 11: UTF-8 names
_FLAG_PLAIN = 0x0800
_VERSION_RECORD = b"3\n"


class _Storage:
    """Stands for a tensor's storage while pickling; :meth:`_Pickler.persistent_id` names it."""

    def __init__(self, storage_type: Any, numel: int) -> None:
        self.storage_type = storage_type
        self.numel = numel


class _Tensor:
    """Pickles as torch pickles a C-contiguous CPU tensor at storage offset 0."""

    def __init__(self, dtype: torch.dtype, shape: Sequence[int]) -> None:
        self.dtype = dtype
        self.shape = tuple(int(n) for n in shape)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        stride = tuple(math.prod(self.shape[i + 1 :]) for i in range(len(self.shape)))
        numel = math.prod(self.shape)
        hooks: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        if self.dtype in torch.storage._new_dtypes():
            itemsize = torch.empty((), dtype=self.dtype).element_size()
            storage = _Storage(torch.UntypedStorage, numel * itemsize)
            args = (storage, 0, self.shape, stride, False, hooks, self.dtype)
            return torch._utils._rebuild_tensor_v3, args
        storage_type = getattr(torch, torch.storage._dtype_to_storage_type_map()[self.dtype])
        return torch._utils._rebuild_tensor_v2, (
            _Storage(storage_type, numel),
            0,
            self.shape,
            stride,
            False,
            hooks,
        )


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", obj.storage_type, "0", "cpu", obj.numel)
        return None


def tensor_pickle(dtype: torch.dtype, shape: Sequence[int]) -> bytes:
    """The ``data.pkl`` torch.save writes for a C-contiguous tensor of ``dtype`` and ``shape``."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(_Tensor(dtype, shape))
    return buf.getvalue()


def serialization_id(identity: str) -> str:
    """40 decimal digits, as torch's, but derived from ``identity`` instead of drawn at random."""
    return str(int.from_bytes(hashlib.sha256(identity.encode()).digest()[:16], "little")).zfill(40)[-40:]


@dataclass(frozen=True)
class _Member:
    name: bytes
    offset: int
    """Of the local header, from the archive start."""
    size: int
    data_offset: int
    header: bytes

    @property
    def big_size(self) -> bool:
        return self.size >= _MAX32

    @property
    def big_offset(self) -> bool:
        return self.offset >= _MAX32

    @property
    def zip64(self) -> bool:
        return self.big_size or self.big_offset

    @property
    def descriptor_size(self) -> int:
        if self.size == 0:
            return 0
        return 24 if self.zip64 else 16

    @property
    def end(self) -> int:
        return self.data_offset + self.size + self.descriptor_size

    def descriptor(self, crc: int) -> bytes:
        if self.size == 0:
            return b""
        if self.zip64:
            return struct.pack("<IIQQ", 0x08074B50, crc, self.size, self.size)
        return struct.pack("<IIII", 0x08074B50, crc, self.size, self.size)

    def central(self, crc: int) -> bytes:
        extra = b""
        if self.zip64:
            fields: tuple[int, ...] = (self.size, self.size) if self.big_size else ()
            fields += (self.offset,) if self.big_offset else ()
            extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields)
        size32 = _MAX32 if self.big_size else self.size
        return (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                0,
                0,
                _FLAG_DESCRIPTOR if self.size else _FLAG_PLAIN,
                0,
                0,
                0,
                crc,
                size32,
                size32,
                len(self.name),
                len(extra),
                0,
                0,
                0,
                0,
                _MAX32 if self.big_offset else self.offset,
            )
            + self.name
            + extra
        )


def _member(name: bytes, offset: int, size: int) -> _Member:
    """Place member ``name`` of ``size`` bytes with its local header at ``offset``."""
    zip64: tuple[int, ...] = ((size, 0) if size >= _MAX32 else ()) + ((offset,) if offset >= _MAX32 else ())
    extra = struct.pack(f"<HH{len(zip64)}Q", 1, 8 * len(zip64), *zip64) if zip64 else b""
    start = offset + 30 + len(name) + len(extra) + 4
    pad = -start % ALIGNMENT
    extra += b"FB" + struct.pack("<H", pad) + b"Z" * pad
    header = (
        struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            0,
            _FLAG_DESCRIPTOR if size else _FLAG_PLAIN,
            0,
            0,
            0,
            0,
            0,
            0,
            len(name),
            len(extra),
        )
        + name
        + extra
    )
    return _Member(name, offset, size, offset + len(header), header)


class ArchiveLayout:
    """Where every member of a torch.save archive lies; the bytes around one streamed member.

    ``members`` are ``(name, data)`` pairs, ``data`` being bytes, or an int (the length) for the
    one member whose bytes are streamed by the caller. Without a streamed member the archive is
    :meth:`whole`.
    """

    def __init__(self, prefix: str, members: Sequence[tuple[str, bytes | int]]) -> None:
        self._members: list[_Member] = []
        self._data: list[bytes | None] = []
        self.streamed: int | None = None
        pos = 0
        for i, (name, data) in enumerate(members):
            size = data if isinstance(data, int) else len(data)
            if isinstance(data, int):
                if self.streamed is not None:
                    raise ValueError("only one member of an archive can be streamed")
                self.streamed = i
            m = _member(f"{prefix}/{name}".encode(), pos, size)
            self._members.append(m)
            self._data.append(None if isinstance(data, int) else bytes(data))
            pos = m.end
        self.cd_offset = pos
        self._crcs = [zlib.crc32(d) if d is not None else 0 for d in self._data]
        self.cd_size = sum(len(m.central(0)) for m in self._members)
        self.size = self.cd_offset + self.cd_size + 56 + 20 + 22

    @property
    def data_offset(self) -> int:
        """Offset of the streamed member's data from the archive start."""
        assert self.streamed is not None
        return self._members[self.streamed].data_offset

    @property
    def data_size(self) -> int:
        assert self.streamed is not None
        return self._members[self.streamed].size

    def _span(self, start: int, stop: int) -> bytes:
        """Headers, data and descriptors of members ``start..stop-1`` (none of them streamed)."""
        out = bytearray()
        for m, data, crc in zip(
            self._members[start:stop], self._data[start:stop], self._crcs[start:stop], strict=True
        ):
            assert data is not None
            out += m.header + data + m.descriptor(crc)
        return bytes(out)

    def head(self) -> bytes:
        """Everything before the streamed member's data (its local header included)."""
        assert self.streamed is not None
        return self._span(0, self.streamed) + self._members[self.streamed].header

    def tail(self, crc: int) -> bytes:
        """Everything after the streamed member's data, given that data's CRC-32."""
        assert self.streamed is not None
        crcs = list(self._crcs)
        crcs[self.streamed] = crc
        return (
            self._members[self.streamed].descriptor(crc)
            + self._span(self.streamed + 1, len(self._members))
            + self._end(crcs)
        )

    def whole(self) -> bytes:
        """The complete archive (no streamed member)."""
        if self.streamed is not None:
            raise ValueError("the archive has a streamed member")
        return self._span(0, len(self._members)) + self._end(self._crcs)

    def _end(self, crcs: list[int]) -> bytes:
        central = b"".join(m.central(c) for m, c in zip(self._members, crcs, strict=True))
        n = len(self._members)
        z64_at = self.cd_offset + len(central)
        return (
            central
            + struct.pack(
                "<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x2D, 0, 0, n, n, len(central), self.cd_offset
            )
            + struct.pack("<IIQI", 0x07064B50, 0, z64_at, 1)
            + struct.pack(
                "<IHHHHIIH",
                0x06054B50,
                0,
                0,
                min(n, 0xFFFF),
                min(n, 0xFFFF),
                min(len(central), _MAX32),
                min(self.cd_offset, _MAX32),
                0,
            )
        )


def tensor_archive(
    dtype: torch.dtype, shape: Sequence[int], identity: str, prefix: str = "archive"
) -> ArchiveLayout:
    """The layout of ``torch.save`` of a C-contiguous ``dtype`` tensor of ``shape``; its data is streamed."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return ArchiveLayout(prefix, _members(tensor_pickle(dtype, shape), nbytes, identity))


def object_archive(pickled: bytes, identity: str, prefix: str = "archive") -> bytes:
    """A complete ``torch.save`` archive of an object without tensors, from its pickle bytes."""
    return ArchiveLayout(prefix, _members(pickled, None, identity)).whole()


def replace_pickle(raw: bytes, pickled: bytes, where: str) -> bytes:
    """Archive ``raw`` (a whole torch.save file) with its ``data.pkl`` replaced by ``pickled``.

    Every other member (storages, version, serialization id) is kept, in its order.
    """
    from merger.errors import CorruptFileError

    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise CorruptFileError(f"{where}: not a torch.save archive (no data.pkl)")
            prefix = pkl[0][: -len("/data.pkl")]
            members: list[tuple[str, bytes | int]] = [
                (n[len(prefix) + 1 :], pickled if n == pkl[0] else zf.read(n)) for n in names
            ]
    except CorruptFileError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"{where}: not a readable torch.save archive ({exc})") from None
    return ArchiveLayout(prefix, members).whole()


def _members(pickled: bytes, data: int | None, identity: str) -> list[tuple[str, bytes | int]]:
    out: list[tuple[str, bytes | int]] = [
        ("data.pkl", pickled),
        (".format_version", b"1"),
        (".storage_alignment", str(ALIGNMENT).encode()),
        ("byteorder", b"little"),
    ]
    if data is not None:
        out.append(("data/0", data))
    out += [("version", _VERSION_RECORD), (".data/serialization_id", serialization_id(identity).encode())]
    return out
