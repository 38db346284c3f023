"""Our torch.save archives against torch's own: the same bytes, streamed; ZIP64 as miniz writes it."""

from __future__ import annotations

import functools
import io
import zipfile
import zlib
from typing import Any

import pytest
import torch

from merger.errors import CorruptFileError
from merger.formats import torch_save
from merger.formats.dcp_writer import PROVENANCE_KEY, with_provenance
from merger.formats.torch_record import load_object_record, locate_tensor
from merger.formats.torch_save import object_archive, tensor_archive

DTYPES = [
    torch.float32,
    torch.bfloat16,
    torch.float16,
    torch.float64,
    torch.float8_e4m3fn,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.uint16,  # a "new" dtype: _rebuild_tensor_v3 over an untyped storage
    torch.uint32,
]
SHAPES = [(2, 3), (0, 4), (), (5,), (3, 1, 7)]

# The bytes after the data of `torch.save(torch.zeros(2**32 + 64, dtype=torch.uint8), "z64rec.pt")`
# (torch 2.13): the ZIP64 data descriptor, the members after 4 GiB (ZIP64 offsets), the central
# directory and the end records. Recorded once; a test cannot afford writing 4 GiB.
# fmt: off
ZIP64_TAIL = bytes.fromhex(
    "504b070877f7cd1d40000000010000004000000001000000504b03040000080800000000000000000000000000000000"
    "00000e003c007a36347265632f76657273696f6e01000800180300000100000046422c005a5a5a5a5a5a5a5a5a5a5a5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a330a504b0708d19e6755020000000000"
    "00000200000000000000504b0304000008080000000000000000000000000000000000001d002b007a36347265632f2e"
    "646174612f73657269616c697a6174696f6e5f6964010008009a0300000100000046421b005a5a5a5a5a5a5a5a5a5a5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a3135373238313939353131383534363433303236303538333931363232333537"
    "3038373633313339504b0708055f7ccb28000000000000002800000000000000504b0102000000000808000000000000"
    "c659cc989f0000009f0000000f00000000000000000000000000000000007a36347265632f646174612e706b6c504b01"
    "02000000000808000000000000b7efdc8301000000010000001600000000000000000000000000ef0000007a36347265"
    "632f2e666f726d61745f76657273696f6e504b01020000000008080000000000003f7771e90200000002000000190000"
    "0000000000000000000000510100007a36347265632f2e73746f726167655f616c69676e6d656e74504b010200000000"
    "0808000000000000853de31906000000060000001000000000000000000000000000d20100007a36347265632f627974"
    "656f72646572504b010200000000080800000000000077f7cd1dffffffffffffffff0d00140000000000000000000000"
    "560200007a36347265632f646174612f300100100040000000010000004000000001000000504b010200000000080800"
    "0000000000d19e675502000000020000000e000c0000000000000000000000ffffffff7a36347265632f76657273696f"
    "6e010008001803000001000000504b0102000000000808000000000000055f7ccb28000000280000001d000c00000000"
    "00000000000000ffffffff7a36347265632f2e646174612f73657269616c697a6174696f6e5f6964010008009a030000"
    "01000000504b06062c000000000000001e032d00000000000000000007000000000000000700000000000000f4010000"
    "000000004004000001000000504b060700000000340600000100000001000000504b05060000000007000700f4010000"
    "ffffffff0000"
)
# fmt: on
ZIP64_CRC = 0x1DCDF777
ZIP64_ID = "1572819951185464302605839162235708763139"


def _torch_save(t: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()


def _slice(data: bytes, offset: int, length: int) -> bytes:
    return data[offset : offset + length]


def _with_id(monkeypatch: pytest.MonkeyPatch, sid: str) -> None:
    monkeypatch.setattr(torch_save, "serialization_id", lambda identity: sid)


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    return (torch.arange(n) % 3).to(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_streamed_record_is_what_torch_save_writes(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    for shape in SHAPES:
        t = _sample(dtype, shape)
        ref = _torch_save(t)
        # torch draws its serialization id at random; everything else must match byte for byte
        _with_id(
            monkeypatch, zipfile.ZipFile(io.BytesIO(ref)).read("archive/.data/serialization_id").decode()
        )
        layout = tensor_archive(dtype, shape, identity="unused")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        half = len(data) // 2  # streamed in two slices, the CRC carried across
        mine = layout.head() + data + layout.tail(zlib.crc32(data[half:], zlib.crc32(data[:half])))
        assert mine == ref, (dtype, shape)
        assert layout.size == len(ref) and layout.data_size == len(data)
        assert zipfile.ZipFile(io.BytesIO(mine)).testzip() is None  # CRCs right
        # and our reader finds the data where we put it
        at = locate_tensor(functools.partial(_slice, mine), 0, len(mine), where="x", dtype=dtype, sizes=shape)
        assert at == layout.data_offset


def test_zip64_record_as_miniz_writes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk of 4 GiB or more: ZIP64 sizes and offsets exactly as torch.save wrote them."""
    _with_id(monkeypatch, ZIP64_ID)
    layout = tensor_archive(torch.uint8, (2**32 + 64,), identity="unused", prefix="z64rec")
    assert layout.data_offset == 704 and layout.data_size == 2**32 + 64
    head = layout.head()
    assert len(head) == 704 and head[598 + 30 : 598 + 43] == b"z64rec/data/0"
    assert head[598 + 43 : 598 + 63] == bytes.fromhex("0100100040000000010000000000000000000000")
    assert layout.tail(ZIP64_CRC) == ZIP64_TAIL
    assert layout.size == 704 + 2**32 + 64 + len(ZIP64_TAIL)


def test_identity_fixes_the_serialization_id() -> None:
    a = tensor_archive(torch.float32, (4,), identity="w|F32|[4]|[0]")
    b = tensor_archive(torch.float32, (4,), identity="w|F32|[4]|[0]")
    c = tensor_archive(torch.float32, (4,), identity="w|F32|[4]|[4]")
    assert a.head() == b.head() and a.tail(0) == b.tail(0) != c.tail(0)
    sid = zipfile.ZipFile(io.BytesIO(a.head() + bytes(16) + a.tail(zlib.crc32(bytes(16))))).read(
        "archive/.data/serialization_id"
    )
    assert len(sid) == 40 and sid.isdigit()


def _common(obj: Any) -> bytes:
    return _torch_save(obj)


def test_provenance_is_added_to_common_state_without_loading_it() -> None:
    import argparse

    common = {
        "args": argparse.Namespace(seq_length=32, params_dtype=torch.bfloat16),
        "iteration": 20,
        "checkpoint_version": 3.0,
        "tensor": torch.arange(3),  # a storage member, kept as it was
    }
    prov = {"kind": "wsm-merge", "weights": [0.25, 0.75], "inputs": [{"uri": "a", "c": 0.25}], "x": None}
    out = with_provenance(_common(common), prov, "common.pt")
    torch.serialization.add_safe_globals([argparse.Namespace])
    loaded = torch.load(io.BytesIO(out))  # weights_only: plain data only
    assert loaded[PROVENANCE_KEY] == prov
    assert loaded["args"] == common["args"] and loaded["iteration"] == 20
    assert torch.equal(loaded["tensor"], torch.arange(3))
    assert zipfile.ZipFile(io.BytesIO(out)).testzip() is None
    # done twice (a merge of merges): the newer provenance wins
    again = with_provenance(out, {"kind": "second"}, "common.pt")
    assert load_object_record(again, "x")[PROVENANCE_KEY] == {"kind": "second"}


def test_provenance_refuses_what_it_cannot_extend() -> None:
    with pytest.raises(CorruptFileError, match=r"common\.pt: holds a list, not a dict"):
        with_provenance(_common([1, 2]), {}, "common.pt")
    with pytest.raises(CorruptFileError, match=r"common\.pt: not a readable torch\.save archive"):
        with_provenance(b"not a zip", {}, "common.pt")
    buf = io.BytesIO()
    torch.save({"a": 1}, buf, pickle_protocol=4)
    with pytest.raises(CorruptFileError, match="not a protocol-2 pickle"):
        with_provenance(buf.getvalue(), {}, "common.pt")


def test_object_archive_loads() -> None:
    import pickle

    raw = object_archive(pickle.dumps({"k": [1, "two"]}, protocol=2), identity="x")
    assert torch.load(io.BytesIO(raw)) == {"k": [1, "two"]}
