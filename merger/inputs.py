"""Resolve a checkpoint reference (local path or fsspec URI; file, HF index or directory) to tensors.

A checkpoint is one ``.safetensors`` file, or shards listed by a Hugging Face
``model.safetensors.index.json``, or a directory holding either. Resolution reads only headers
(and the index), never tensor data, so a plan over remote checkpoints costs a few small requests.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from merger.errors import CorruptFileError, MergeError
from merger.safetensors_io import FsspecSource, Header, LocalSource, TensorInfo, read_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

Source = LocalSource | FsspecSource


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names something other than a local file (``file://`` counts as local)."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def join_uri(base: str, name: str) -> str:
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), name)
    return os.path.join(local_path(base), name)


def parent_uri(uri: str) -> str:
    return posixpath.dirname(uri.rstrip("/")) if is_remote(uri) else os.path.dirname(local_path(uri))


def get_fs(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem and in-filesystem path of a remote ``uri``."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri, **dict(storage_options or {}))
    return fs, str(path)


def open_source(
    uri: str, storage_options: Mapping[str, Any] | None = None, size: int | None = None
) -> Source:
    """A :class:`LocalSource` (mmap) for local files, else an :class:`FsspecSource` (ranged reads)."""
    if not is_remote(uri):
        path = local_path(uri)
        if not os.path.isfile(path):
            raise MergeError(f"{uri}: no such file")
        return LocalSource(path)
    fs, path = get_fs(uri, storage_options)
    return FsspecSource(fs, path, uri, size)


@dataclass(frozen=True)
class FileRef:
    """One safetensors file of a checkpoint, with its parsed header and size."""

    uri: str
    size: int
    header: Header


@dataclass(frozen=True)
class TensorLoc:
    """Where a tensor of a checkpoint lives: file index and header entry."""

    file: int
    info: TensorInfo


@dataclass
class CheckpointRef:
    """A resolved checkpoint: its files and the location of every tensor."""

    uri: str
    files: list[FileRef]
    tensors: dict[str, TensorLoc]
    sha256: str | None = None
    """sha256 of the weights when known without hashing (store checkpoints carry it in their manifest)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Provenance the caller attaches (store run/tokens, ...); copied into the merge manifest."""
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    """fsspec options the files were resolved with (a plan without its own inherits them)."""

    @property
    def nbytes(self) -> int:
        return sum(loc.info.nbytes for loc in self.tensors.values())


def _exists(uri: str, storage_options: Mapping[str, Any] | None) -> bool:
    if not is_remote(uri):
        return os.path.exists(local_path(uri))
    fs, path = get_fs(uri, storage_options)
    return bool(fs.exists(path))


def _read_small(uri: str, storage_options: Mapping[str, Any] | None) -> bytes:
    if not is_remote(uri):
        with open(local_path(uri), "rb") as f:
            return f.read()
    fs, path = get_fs(uri, storage_options)
    return bytes(fs.cat_file(path))


def _file_uris(
    uri: str, storage_options: Mapping[str, Any] | None
) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files behind ``uri`` (file, index json or directory) in a fixed order, and
    the index's tensor -> shard map when there is one."""
    if uri.endswith(".safetensors"):
        return [uri], None
    if not uri.endswith(".json"):
        index = join_uri(uri, INDEX_NAME)
        if _exists(index, storage_options):
            uri = index
        elif _exists(join_uri(uri, SINGLE_NAME), storage_options):
            return [join_uri(uri, SINGLE_NAME)], None
        else:
            raise MergeError(f"{uri}: neither {SINGLE_NAME} nor {INDEX_NAME} found there")
    try:
        index_obj = json.loads(_read_small(uri, storage_options))
        weight_map = {str(k): str(v) for k, v in index_obj["weight_map"].items()}
        shards = sorted(set(weight_map.values()))
    except FileNotFoundError:
        raise MergeError(f"{uri}: no such file") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptFileError(f"{uri}: not a valid safetensors index ({exc!r})") from None
    base = parent_uri(uri)
    return [join_uri(base, s) for s in shards], weight_map


def _load_file(uri: str, storage_options: Mapping[str, Any] | None) -> FileRef:
    source = open_source(uri, storage_options)
    try:
        return FileRef(uri=uri, size=source.size(), header=read_header(source))
    except FileNotFoundError:
        raise MergeError(f"{uri}: no such file") from None
    finally:
        source.close()


def resolve_checkpoint(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> CheckpointRef:
    """Read the headers of every file of checkpoint ``uri`` and map each tensor to its file."""
    uri = str(uri)
    uris, weight_map = _file_uris(uri, storage_options)
    # Headers of remote shards are independent small requests: fetch them concurrently.
    with ThreadPoolExecutor(max_workers=min(8, len(uris))) as pool:
        files = list(pool.map(lambda u: _load_file(u, storage_options), uris))
    tensors: dict[str, TensorLoc] = {}
    for i, f in enumerate(files):
        for name, info in f.header.tensors.items():
            if name in tensors:
                raise CorruptFileError(
                    f"{uri}: tensor {name!r} appears in both {files[tensors[name].file].uri} and {f.uri}"
                )
            tensors[name] = TensorLoc(i, info)
    if not tensors:
        raise MergeError(f"{uri}: checkpoint holds no tensors")
    if weight_map is not None:
        # The index is what HF loaders trust: a tensor it maps to a shard lacking it is corruption.
        for name, shard in sorted(weight_map.items()):
            loc = tensors.get(name)
            if loc is None or posixpath.basename(files[loc.file].uri.replace(os.sep, "/")) != shard:
                raise CorruptFileError(
                    f"{uri}: index maps tensor {name!r} to {shard}, which does not hold it"
                )
        for name in tensors:
            if name not in weight_map:
                raise CorruptFileError(f"{uri}: tensor {name!r} is in a shard but not in the index")
    return CheckpointRef(
        uri=uri,
        files=files,
        tensors=tensors,
        sha256=sha256,
        extra=dict(extra or {}),
        storage_options=dict(storage_options or {}),
    )
