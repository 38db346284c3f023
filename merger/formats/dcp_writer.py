"""The ``torch_dist`` output format: a PyTorch DCP directory in Megatron-LM's layout.

What a merge writes (docs/FORMATS.md, "Writing torch_dist"):

- ``__<k>_0.distcp``: output file ``k`` of the plan, a concatenation of records as torch's default
  ``FileSystemWriter`` writes them: per tensor chunk a complete ``torch.save`` archive (built by
  :mod:`merger.formats.torch_save`, the raw bytes STORED), per byte item its bytes copied verbatim
  from the newest checkpoint. Every chunk of the inputs' layout is kept (offsets and sizes), so a
  TP=2 input gives a TP=2-sharded output that loads at any parallelism;
- ``.metadata``: torch's ``Metadata`` (every key's dtype, global shape and chunks; every record's
  file, offset and length), pickled as torch's writer pickles it;
- ``common.pt``: the newest input's ``common.pt`` (Megatron's ``args``, ``iteration``...) with one
  key added, ``wsm_merge``: the merge's provenance as plain data (a new archive holding only that
  key when the newest input has none);
- ``metadata.json``: the newest input's (``{"sharded_backend": "torch_dist", ...}``).

Every record's size is fixed by its dtype and shape, so every offset is known when planning:
parts of a split merge write their own files, and the final step writes only the small files.
:func:`megatron_iteration_dir` names the ``iter_<7 digits>`` directory that
``latest_checkpointed_iteration.txt`` points at, for Megatron-LM's ``--load``.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import uuid
import zipfile
import zlib
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from merger.errors import CorruptFileError
from merger.formats.dtypes import DTYPES
from merger.formats.output import OutRecord
from merger.formats.sources import exists, join_uri, read_small
from merger.formats.torch_record import load_object_record
from merger.formats.torch_save import ArchiveLayout, object_archive, replace_pickle, tensor_archive
from merger.writer import Sink

if TYPE_CHECKING:
    from merger.plan import MergePlan, ShardPlan

log = logging.getLogger(__name__)

OUT_FORMAT = "torch_dist"
METADATA_NAME = ".metadata"
COMMON_NAME = "common.pt"
CONFIG_NAME = "metadata.json"
TRACKER_NAME = "latest_checkpointed_iteration.txt"
PROVENANCE_KEY = "wsm_merge"
"""The key of ``common.pt`` that holds the merge's provenance."""
DEFAULT_CONFIG = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}


def shard_name(index: int, count: int) -> str:
    """Megatron names files ``__<rank>_<thread>.distcp``; output file ``index`` is ``__<index>_0``."""
    return f"__{index}_0.distcp"


def records(plan: MergePlan, shard: ShardPlan) -> list[OutRecord]:
    """Per tensor its chunks in offsets order (the inputs' layout), then the shard's byte items."""
    ref = plan.inputs[0]
    out = []
    for name in shard.tensors:
        t = plan.tensor(name)
        for c in sorted(ref.tensors[name].chunks, key=lambda c: c.offsets):
            out.append(OutRecord(name, t.out_dtype, c.sizes, c.offsets))
    newest = plan.newest_input
    out += [OutRecord(i, "", (), None, newest.items[i].nbytes) for i in shard.items]
    return out


@lru_cache(maxsize=4096)
def _archive(name: str, dtype: str, shape: tuple[int, ...], offsets: tuple[int, ...]) -> ArchiveLayout:
    return tensor_archive(DTYPES[dtype][0], shape, identity=f"{name}|{dtype}|{list(shape)}|{list(offsets)}")


def _layout(rec: OutRecord) -> ArchiveLayout | None:
    return None if rec.is_item else _archive(rec.name, rec.dtype, rec.shape, rec.offsets or ())


def _length(rec: OutRecord) -> int:
    layout = _layout(rec)
    return layout.size if layout is not None else int(rec.item_bytes or 0)


def file_size(plan: MergePlan, shard: ShardPlan) -> int:
    return sum(_length(r) for r in records(plan, shard))


class DcpFileWriter:
    """Streams one ``.distcp`` file: per tensor record its archive head, the data, then the tail."""

    def __init__(self, name: str, sink: Sink, recs: list[OutRecord]) -> None:
        self.name = name
        self.sink = sink
        self._records = recs
        self._layouts = [_layout(r) for r in recs]
        self.size = sum(_length(r) for r in recs)
        self.bytes_written = 0
        self._next = 0
        self._remaining = 0
        self._crc = 0

    def _write(self, data: bytes | memoryview | Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self.sink.write(view)
            n = len(view) if n is None else n
            if n <= 0:
                raise OSError(f"{self.name}: write made no progress")
            view = view[n:]
            self.bytes_written += n

    def write_record(self, record: int, data: memoryview | Any, *, first: bool, last: bool) -> None:
        rec, layout = self._records[record], self._layouts[record]
        if first:
            if record != self._next:
                raise RuntimeError(f"{self.name}: record {record} started before record {self._next}")
            self._remaining = layout.data_size if layout is not None else int(rec.item_bytes or 0)
            self._crc = 0
            if layout is not None:
                self._write(layout.head())
        n = memoryview(data).nbytes
        if n > self._remaining:
            raise RuntimeError(f"{self.name}: {n} bytes more than record {rec.name!r} holds")
        self._remaining -= n
        if layout is not None:
            self._crc = zlib.crc32(data, self._crc)
        self._write(data)
        if last:
            if self._remaining:
                raise RuntimeError(f"{self.name}: record {rec.name!r} is {self._remaining} bytes short")
            if layout is not None:
                self._write(layout.tail(self._crc))
            self._next += 1

    def commit(self) -> None:
        if self._next != len(self._records) or self.bytes_written != self.size:
            self.sink.abort()
            raise RuntimeError(
                f"{self.name}: {self._next} of {len(self._records)} records, "
                f"{self.bytes_written} of {self.size} bytes written"
            )
        self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()


def open_file(plan: MergePlan, shard: ShardPlan, sink: Sink) -> DcpFileWriter:
    return DcpFileWriter(shard.filename, sink, records(plan, shard))


# -- the small files, written last ------------------------------------------------------------------


def build_metadata(plan: MergePlan, save_id: str) -> Any:
    """torch's ``Metadata`` of the output: keys, chunks, and where each record lies."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    state: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    for shard in plan.shards:
        offset = 0
        for rec in records(plan, shard):
            length = _length(rec)
            if rec.is_item:
                state[rec.name] = BytesStorageMetadata()
                storage[MetadataIndex(rec.name)] = _StorageInfo(shard.filename, offset, length)
            else:
                t = plan.tensor(rec.name)
                meta = state.get(rec.name)
                if meta is None:
                    props = TensorProperties(dtype=DTYPES[rec.dtype][0])
                    meta = state[rec.name] = TensorStorageMetadata(props, torch.Size(t.shape), [])
                offsets = torch.Size(rec.offsets or ())
                meta.chunks.append(ChunkStorageMetadata(offsets=offsets, sizes=torch.Size(rec.shape)))
                storage[MetadataIndex(rec.name, offsets)] = _StorageInfo(shard.filename, offset, length)
            offset += length
    return Metadata(
        state_dict_metadata=state,
        storage_data=storage,
        storage_meta=StorageMeta(checkpoint_id=None, save_id=save_id, load_id=None),
    )


def _pickle_ops(value: Any) -> bytes:
    """Protocol-2 opcodes pushing ``value`` (no PROTO, no STOP, no memo): spliceable into a pickle."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.fast = True  # no memo entries: nothing can clash with the host pickle's
    pickler.dump(value)
    return buf.getvalue()[2:-1]


def _data_pkl(raw: bytes, where: str) -> bytes:
    """The ``data.pkl`` bytes of the torch.save archive ``raw``."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) == 1:
                return zf.read(names[0])
    except Exception as exc:
        raise CorruptFileError(f"{where}: not a readable torch.save archive ({exc})") from None
    raise CorruptFileError(f"{where}: not a torch.save archive (no data.pkl)")


def with_provenance(raw: bytes, provenance: dict[str, Any], where: str) -> bytes:
    """``common.pt`` bytes ``raw`` with ``wsm_merge: provenance`` added to its top-level dict.

    The pickle is extended, not re-created: ``key value SETITEM`` before its final STOP, so every
    object in it (Megatron's ``args``, enums...) stays as Megatron wrote it, and nothing from the
    checkpoint is ever imported or run here (it is read with the reader's stand-ins).
    """
    common = load_object_record(raw, where)
    if not isinstance(common, dict):
        raise CorruptFileError(f"{where}: holds a {type(common).__name__}, not a dict")
    pkl = _data_pkl(raw, where)
    if not (pkl.startswith(b"\x80\x02") and pkl.endswith(b".")):
        raise CorruptFileError(f"{where}: not a protocol-2 pickle; cannot add the merge provenance")
    extended = pkl[:-1] + _pickle_ops(PROVENANCE_KEY) + _pickle_ops(provenance) + b"s."
    out = replace_pickle(raw, extended, where)
    check = load_object_record(out, where)
    if not isinstance(check, dict) or check.get(PROVENANCE_KEY) != provenance:
        raise CorruptFileError(f"{where}: adding the merge provenance did not round-trip")
    return out


def _newest_file(plan: MergePlan, name: str) -> bytes | None:
    """A small file of the newest input's DCP directory, if it is one and has it."""
    ck = plan.newest_input
    if ck.format != "dcp":
        return None
    uri = join_uri(ck.uri, name)
    if not exists(uri, ck.storage_options):
        return None
    return read_small(uri, ck.storage_options)


def common_state(plan: MergePlan, provenance: dict[str, Any]) -> bytes:
    """``common.pt``: the newest input's, plus the provenance; or one holding only the provenance."""
    raw = _newest_file(plan, COMMON_NAME)
    identity = f"common|{save_id(provenance)}"
    if raw is None:
        return object_archive(b"\x80\x02" + _pickle_ops({PROVENANCE_KEY: provenance}) + b".", identity)
    return with_provenance(raw, provenance, join_uri(plan.newest_input.uri, COMMON_NAME))


def save_id(provenance: dict[str, Any]) -> str:
    """A save id derived from the provenance: the same merge writes the same ``.metadata``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(provenance, sort_keys=True, default=str)))


def metadata_files(plan: MergePlan, provenance: dict[str, Any]) -> dict[str, bytes]:
    """``.metadata``, ``common.pt`` and ``metadata.json``, in the order they should be written:
    ``.metadata`` last, since DCP readers take a directory holding it as complete."""
    config = _newest_file(plan, CONFIG_NAME)
    if config is None:
        config = (json.dumps(DEFAULT_CONFIG) + "\n").encode()
    return {
        COMMON_NAME: common_state(plan, provenance),
        CONFIG_NAME: config,
        METADATA_NAME: pickle.dumps(build_metadata(plan, save_id(provenance))),
    }


def megatron_iteration_dir(plan: MergePlan) -> tuple[str, str]:
    """``(directory, tracker text)`` of a Megatron-LM save dir holding the output: the newest
    input's ``iter_<7 digits>`` and iteration, or ``release`` when it has no iteration."""
    iteration = plan.newest_input.metadata.get("iteration")
    if isinstance(iteration, int) and not isinstance(iteration, bool) and iteration >= 0:
        return f"iter_{iteration:07d}", str(iteration)
    return "release", "release"
