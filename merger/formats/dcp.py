"""PyTorch DCP checkpoints (Megatron ``torch_dist``, torchtitan, OLMo-core) as a :class:`CheckpointLayout`.

A DCP directory holds ``.metadata`` (torch's pickled ``Metadata``: every key with its dtype,
global shape and chunks, and where each chunk's record lies in which ``__<rank>_<i>.distcp``
file) plus the ``.distcp`` files. :func:`open_dcp` reads ``.metadata``, lists the directory once,
then finds the raw bytes of every chunk inside its record with a few small ranged reads per
record, issued concurrently (see :mod:`merger.formats.torch_record`). It never reads tensor data.

What is merged. Only model state is listed (``tensors`` and ``items``); every other key goes to
``layout.skipped``:

- optimizer state: keys under ``optimizer.`` (megatron-core's ``optimizer.state.exp_avg.<param>``,
  ``optimizer.state.fp32_param.<param>``, ``optimizer.distributed.dp_group_idx_<i>...``;
  torchtitan's ``optimizer.state.<param>.exp_avg``), ``chained_<i>.optimizer.`` (megatron's
  chained optimizers) and ``optim.`` (OLMo-core). ``include_optimizer=True`` lists them too;
- training state that is never merged: ``rng_state`` and ``rerun_state_machine_state`` (Megatron,
  ShardedObjects named ``<key>/shard_<offset>_<shape>``), ``lr_scheduler``, ``dataloader``,
  ``train_state`` (torchtitan), ``opt_param_scheduler``, ``scheduler``, ``data_loader``.

Everything else is model state, named exactly as stored (Megatron: ``decoder.layers.mlp.linear_fc1.weight``
with the layer as a leading dimension; OLMo-core: ``model.<fqn>``; torchtitan: ``<fqn>``). Byte
items among them (Transformer Engine ``_extra_state/shard_...``) become :class:`ByteItem` spanning
their whole record, to be copied verbatim.

For Megatron directories ``layout.metadata`` carries ``metadata.json`` (``sharded_backend``...)
and, from ``common.pt``, ``iteration``, ``checkpoint_version`` and the saved arguments that
matter here (:data:`MEGATRON_ARGS`), read as plain data without importing Megatron-LM.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import pickle
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import torch

from merger.errors import CorruptFileError, MergeError
from merger.formats.base import ByteItem, CheckpointLayout, FileInfo, TensorChunk, TensorEntry
from merger.formats.dtypes import TORCH_TO_CODE
from merger.formats.sources import FsspecSource, LocalSource, exists, get_fs, is_remote, join_uri, local_path
from merger.formats.torch_record import Opaque, load_object_record, locate_tensor

log = logging.getLogger(__name__)

FORMAT = "dcp"
PRIORITY = 10
"""Detection order among formats (merger/formats/__init__.py): after safetensors."""
METADATA_NAME = ".metadata"
COMMON_NAME = "common.pt"
CONFIG_NAME = "metadata.json"
MAX_SMALL_FILE = 64 * 1024 * 1024  # .metadata, common.pt and metadata.json are read whole up to this
MAX_WORKERS = 32  # concurrent small reads: S3 round trips, not bandwidth, bound a listing

_OPTIMIZER_KEY = re.compile(r"^(chained_\d+\.)?(optimizer|optim)([./]|$)")
NON_MODEL_ROOTS = frozenset(
    {
        "rng_state",
        "rerun_state_machine_state",
        "lr_scheduler",
        "dataloader",
        "data_loader",
        "train_state",
        "opt_param_scheduler",
        "scheduler",
    }
)
MEGATRON_ARGS = (
    "global_batch_size",
    "micro_batch_size",
    "rampup_batch_size",
    "seq_length",
    "max_position_embeddings",
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "group_query_attention",
    "num_query_groups",
    "kv_channels",
    "vocab_size",
    "padded_vocab_size",
    "make_vocab_size_divisible_by",
    "normalization",
    "norm_epsilon",
    "swiglu",
    "position_embedding_type",
    "rotary_base",
    "rotary_percent",
    "untie_embeddings_and_output_weights",
    "add_bias_linear",
    "add_qkv_bias",
    "num_experts",
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "expert_model_parallel_size",
    "bf16",
    "fp16",
    "params_dtype",
    "ckpt_format",
    "train_iters",
    "consumed_train_samples",
    "tokenizer_type",
    "attention_backend",
)


def key_kind(key: str) -> str:
    """``optimizer``, ``state`` (RNG, scheduler, data loader...) or ``model``: the skipping policy."""
    if _OPTIMIZER_KEY.match(key):
        return "optimizer"
    if re.split(r"[./]", key, maxsplit=1)[0] in NON_MODEL_ROOTS:
        return "state"
    return "model"


class _MetadataUnpickler(pickle.Unpickler):
    """torch's reader does ``pickle.load``; we accept only the types a DCP ``Metadata`` is made of,
    so a ``.metadata`` from a remote bucket cannot run code."""

    _MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner")
    _OTHER: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
            ("torch", "Size"),
            ("torch.serialization", "_get_layout"),
            ("collections", "OrderedDict"),
            ("builtins", "set"),
            ("builtins", "frozenset"),
            # StorageMeta.checkpoint_id is the path the writer was given
            ("pathlib", "PosixPath"),
            ("pathlib", "PurePosixPath"),
            ("pathlib", "WindowsPath"),
            ("pathlib", "PureWindowsPath"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in self._OTHER:
            return super().find_class(module, name)
        if module in self._MODULES:
            obj = super().find_class(module, name)
            if isinstance(obj, type) and obj.__module__ == module:
                return obj
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")


def read_metadata(raw: bytes, where: str) -> Any:
    """Unpickle a DCP ``.metadata`` file's bytes into torch's ``Metadata``."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        md = _MetadataUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:
        raise CorruptFileError(f"{where}: not a readable DCP metadata file ({exc})") from None
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise CorruptFileError(f"{where}: holds a {type(md).__name__}, not DCP Metadata")
    if not isinstance(md.storage_data, dict):
        raise CorruptFileError(f"{where}: DCP metadata without storage data (not written by a file writer)")
    return md


class _Dir:
    """A checkpoint directory, local or remote: one listing, small whole-file reads, sources."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None) -> None:
        self.uri = uri.rstrip("/") if is_remote(uri) else uri
        self.storage_options = dict(storage_options or {})
        self.fs: Any = None
        self.path = ""
        if is_remote(uri):
            self.fs, self.path = get_fs(uri, storage_options)
            self.path = self.path.rstrip("/")
        self.sizes = self._list()

    def _list(self) -> dict[str, int]:
        if self.fs is None:
            path = local_path(self.uri)
            if not os.path.isdir(path):
                raise MergeError(f"{self.uri}: no such directory")
            return {e.name: e.stat().st_size for e in os.scandir(path) if e.is_file()}
        self.fs.invalidate_cache(self.path)
        try:
            entries = self.fs.ls(self.path, detail=True)
        except FileNotFoundError:
            raise MergeError(f"{self.uri}: no such directory") from None
        return {
            e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
            for e in entries
            if e.get("type") == "file"
        }

    def file_uri(self, name: str) -> str:
        return join_uri(self.uri, name)

    def source(self, name: str) -> LocalSource | FsspecSource:
        if self.fs is None:
            return LocalSource(os.path.join(local_path(self.uri), name))
        return FsspecSource(self.fs, f"{self.path}/{name}", self.file_uri(name), self.sizes[name])

    def read_small(self, name: str) -> bytes:
        size = self.sizes[name]
        if size > MAX_SMALL_FILE:
            raise CorruptFileError(f"{self.file_uri(name)}: {size} bytes is too large for this file")
        return self.source(name).read_header_bytes(0, size)


def detect(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``uri`` is a DCP checkpoint directory (it holds a ``.metadata``)."""
    return exists(join_uri(uri, METADATA_NAME), storage_options)


def open_checkpoint(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> CheckpointLayout:
    """The format seam's entry point: :func:`open_dcp` with model state only."""
    layout = open_dcp(uri, storage_options)
    layout.sha256 = sha256
    layout.extra = dict(extra or {})
    return layout


def open_dcp(
    uri: str, storage_options: Mapping[str, Any] | None = None, *, include_optimizer: bool = False
) -> CheckpointLayout:
    """Resolve the DCP checkpoint directory ``uri`` (local path or fsspec URI) to its layout.

    Reads ``.metadata``, one directory listing, Megatron's small ``common.pt``/``metadata.json``
    when present, and per tensor record its tail and head (about 1.6 kB); never tensor data.
    """
    uri = str(uri)
    d = _Dir(uri, storage_options)
    if METADATA_NAME not in d.sizes:
        raise MergeError(f"{uri}: no {METADATA_NAME} there (not a DCP checkpoint, or not complete)")
    md = read_metadata(d.read_small(METADATA_NAME), d.file_uri(METADATA_NAME))
    storage: dict[tuple[str, tuple[int, ...] | None], Any] = {
        (idx.fqn, None if idx.offset is None else tuple(idx.offset)): info
        for idx, info in md.storage_data.items()
    }

    files: list[FileInfo] = []
    file_index: dict[str, int] = {}

    def record(key: str, offsets: tuple[int, ...] | None) -> tuple[int, int, int]:
        """(file index, record offset, record length) of one stored item, checked against the file."""
        info = storage.get((key, offsets))
        if info is None:
            where = key if offsets is None else f"{key} chunk at {list(offsets)}"
            raise CorruptFileError(f"{d.file_uri(METADATA_NAME)}: no storage record for {where}")
        name = str(info.relative_path)
        if getattr(info, "transform_descriptors", None):
            raise CorruptFileError(
                f"{d.file_uri(name)}: record {key!r} is stored transformed ({list(info.transform_descriptors)}); "
                "only plain records can be read by byte range"
            )
        if name not in d.sizes:
            raise CorruptFileError(f"{d.file_uri(name)}: missing (it holds record {key!r})")
        end = int(info.offset) + int(info.length)
        if end > d.sizes[name]:
            raise CorruptFileError(
                f"{d.file_uri(name)}: truncated: record {key!r} needs bytes up to {end}, file has {d.sizes[name]}"
            )
        if name not in file_index:
            file_index[name] = len(files)
            files.append(FileInfo(d.file_uri(name), d.sizes[name]))
        return file_index[name], int(info.offset), int(info.length)

    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    skipped: list[str] = []
    items: dict[str, ByteItem] = {}
    jobs: list[tuple[str, str, tuple[int, ...], tuple[int, ...], int, int, int]] = []
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key in sorted(md.state_dict_metadata):
        meta = md.state_dict_metadata[key]
        kind = key_kind(key)
        if kind == "state" or (kind == "optimizer" and not include_optimizer):
            skipped.append(key)
            continue
        if isinstance(meta, BytesStorageMetadata):
            f, off, length = record(key, None)
            items[key] = ByteItem(key, f, off, length)
        elif isinstance(meta, TensorStorageMetadata):
            dtype = TORCH_TO_CODE.get(meta.properties.dtype)
            if dtype is None:
                raise MergeError(f"{uri}: tensor {key!r} has unsupported dtype {meta.properties.dtype}")
            shape = tuple(int(n) for n in meta.size)
            entries[key] = (dtype, shape)
            for chunk in meta.chunks:
                offsets, sizes = tuple(int(n) for n in chunk.offsets), tuple(int(n) for n in chunk.sizes)
                jobs.append((key, dtype, offsets, sizes, *record(key, offsets)))
        else:
            raise CorruptFileError(
                f"{d.file_uri(METADATA_NAME)}: key {key!r} has unknown type {type(meta).__name__}"
            )

    sources = [d.source(name) for name in file_index]
    try:
        chunks = _locate_all(jobs, files, sources)
    finally:
        for s in sources:
            s.close()
    tensors: dict[str, TensorEntry] = {}
    for key, (dtype, shape) in entries.items():
        tensors[key] = TensorEntry(key, dtype, shape, _tiling(uri, key, shape, chunks.get(key, [])))
    if not tensors:
        raise MergeError(f"{uri}: checkpoint holds no model tensors")
    return CheckpointLayout(
        uri=uri,
        format="dcp",
        files=files,
        tensors=tensors,
        items=items,
        metadata=_megatron_metadata(d),
        skipped=skipped,
        storage_options=d.storage_options,
    )


def _locate_all(
    jobs: list[tuple[str, str, tuple[int, ...], tuple[int, ...], int, int, int]],
    files: list[FileInfo],
    sources: list[LocalSource | FsspecSource],
) -> dict[str, list[TensorChunk]]:
    """Find every chunk's data inside its record, records in parallel (each a few small reads)."""
    from merger.formats.dtypes import DTYPES

    def one(job: tuple[str, str, tuple[int, ...], tuple[int, ...], int, int, int]) -> TensorChunk:
        key, dtype, offsets, sizes, f, start, length = job
        src = sources[f]

        def read(offset: int, n: int) -> bytes:
            data = src.read_header_bytes(offset, n)
            if len(data) != n:
                raise CorruptFileError(
                    f"{files[f].uri}: short read at {offset}: got {len(data)} of {n} bytes"
                )
            return data

        where = f"{files[f].uri}: record {key!r} at {start}"
        at = locate_tensor(read, start, length, where=where, dtype=DTYPES[dtype][0], sizes=sizes)
        return TensorChunk(offsets, sizes, f, at, math.prod(sizes) * DTYPES[dtype][1])

    out: dict[str, list[TensorChunk]] = {}
    if not jobs:
        return out
    pool = ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(jobs)))
    try:
        for job, chunk in zip(jobs, pool.map(one, jobs), strict=True):
            out.setdefault(job[0], []).append(chunk)
    finally:
        # On the first bad record, drop the reads not yet started instead of waiting for them.
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _tiling(uri: str, key: str, shape: tuple[int, ...], chunks: list[TensorChunk]) -> tuple[TensorChunk, ...]:
    """Chunks sorted by offsets, checked to cover the global tensor exactly once."""
    chunks = sorted(chunks, key=lambda c: c.offsets)
    for c in chunks:
        if len(c.offsets) != len(shape) or any(
            o < 0 or o + n > s for o, n, s in zip(c.offsets, c.sizes, shape, strict=True)
        ):
            raise CorruptFileError(
                f"{uri}: tensor {key!r} chunk at {list(c.offsets)} lies outside {list(shape)}"
            )
    if sum(c.numel for c in chunks) != math.prod(shape):
        raise CorruptFileError(
            f"{uri}: chunks of tensor {key!r} do not cover its shape {list(shape)} exactly"
        )
    for i, a in enumerate(chunks):
        for b in chunks[i + 1 :]:
            if (
                a.numel
                and b.numel
                and all(
                    ao < bo + bn and bo < ao + an
                    for ao, an, bo, bn in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
                )
            ):
                raise CorruptFileError(
                    f"{uri}: tensor {key!r} chunks at {list(a.offsets)} and {list(b.offsets)} overlap"
                )
    return tuple(chunks)


def _plain(value: Any) -> Any:
    """A JSON-friendly form of a value read from ``common.pt`` (dtypes and stand-ins become strings)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, Opaque):
        return repr(value)
    return str(value)


def _megatron_metadata(d: _Dir) -> dict[str, Any]:
    """What Megatron's ``metadata.json`` and ``common.pt`` say that matters; ``{}`` for plain DCP."""
    out: dict[str, Any] = {}
    if CONFIG_NAME in d.sizes:
        where = d.file_uri(CONFIG_NAME)
        try:
            config = json.loads(d.read_small(CONFIG_NAME))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise CorruptFileError(f"{where}: not a JSON object")
        out.update({k: _plain(v) for k, v in config.items()})
    if COMMON_NAME in d.sizes:
        where = d.file_uri(COMMON_NAME)
        common = load_object_record(d.read_small(COMMON_NAME), where)
        if not isinstance(common, dict):
            raise CorruptFileError(f"{where}: holds a {type(common).__name__}, not Megatron's common state")
        for name in ("iteration", "checkpoint_version", "num_floating_point_operations_so_far"):
            if name in common:
                out[name] = _plain(common[name])
        args = common.get("args")
        if args is not None:
            fields = vars(args) if hasattr(args, "__dict__") and not isinstance(args, Opaque) else {}
            out["args"] = {k: _plain(fields[k]) for k in MEGATRON_ARGS if k in fields}
    return out


@dataclasses.dataclass(frozen=True)
class DcpSummary:
    """What identifies a DCP directory and counts its tokens, read without touching any record."""

    uri: str
    sizes: dict[str, int]
    """Every file of the directory (one listing) with its size."""
    metadata: bytes
    """The raw ``.metadata`` file (torch writes a fresh ``save_id`` into it on every save)."""
    megatron: dict[str, Any]
    """Megatron's ``metadata.json`` and ``common.pt`` facts, as in ``CheckpointLayout.metadata`` (``{}`` if none)."""


def summarize(uri: str, storage_options: Mapping[str, Any] | None = None) -> DcpSummary:
    """One listing of DCP directory ``uri``, its ``.metadata`` and Megatron's small files; no record is read."""
    d = _Dir(str(uri), storage_options)
    if METADATA_NAME not in d.sizes:
        raise MergeError(f"{uri}: no {METADATA_NAME} there (not a DCP checkpoint, or not complete)")
    return DcpSummary(d.uri, dict(d.sizes), d.read_small(METADATA_NAME), _megatron_metadata(d))
