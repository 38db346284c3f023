"""From a store URL to an fsspec filesystem, plus the few operations whose atomicity differs by backend.

Local disk gets real atomicity (temporary name + fsync + rename); object stores (S3, memory) get
it from single-object PUTs and completed multipart uploads, which are all-or-nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from wsm.settings import Settings
from wsm.store import owner

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


def s3_options(settings: Settings) -> dict[str, Any]:
    """s3fs options from settings; unset values are left to botocore's/fsspec's env chain."""
    opts: dict[str, Any] = {}
    if settings.s3_endpoint_url:
        opts["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key_id:
        opts["key"] = settings.s3_access_key_id
    if settings.s3_secret_access_key:
        opts["secret"] = settings.s3_secret_access_key
    if settings.s3_region:
        opts["client_kwargs"] = {"region_name": settings.s3_region}
    return opts


def make_filesystem(
    url: str, settings: Settings, storage_options: Mapping[str, Any]
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root path (without trailing slash) for ``url``."""
    protocol, _, _ = url.partition("://")
    opts: dict[str, Any] = {}
    if "://" in url and protocol in ("s3", "s3a"):
        opts.update(s3_options(settings))
        # Several processes write the store: a cached listing would hide their artifacts.
        opts["use_listings_cache"] = False
    elif "://" not in url or protocol in ("file", "local"):
        opts["auto_mkdir"] = True  # object stores have no directories; make local disk behave alike
    extra = dict(storage_options)
    region = extra.pop("region", None)
    opts.update(extra)
    if region:
        opts.setdefault("client_kwargs", {})["region_name"] = region
    fs, root = url_to_fs(url, **opts)
    root = root.rstrip("/") if root not in ("", "/") else root
    if isinstance(fs, LocalFileSystem):
        os.makedirs(root, exist_ok=True)
    return fs, root


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def fsync_dir(path: str) -> None:
    """fsync a directory so a rename inside it survives a crash (no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def hidden_name(prefix: str, base: str) -> str:
    """A unique hidden name for ``base`` (``prefix`` is TMP_PREFIX or TRASH_PREFIX) ending with this
    process's marker, so a restarted writer can tell its dead predecessor's leftovers (wsm/store/owner.py)."""
    return f"{prefix}{base}-{uuid.uuid4().hex[:12]}{owner.marker()}"


def local_tmp_name(path: str) -> str:
    """A hidden temporary sibling of ``path``; listings ignore it, cleanup removes it once its writer is gone."""
    head, tail = os.path.split(path)
    return os.path.join(head, hidden_name(TMP_PREFIX, tail))


def atomic_write_bytes(
    fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, exclusive: bool = False
) -> None:
    """Write one whole file so readers see either nothing/the old content or all of ``data``.

    ``exclusive`` refuses to replace an existing file (local only: hard link fails if the target
    exists; object stores have no portable conditional PUT, so there it is a plain PUT).
    """
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = local_tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # raises FileExistsError: never clobber a concurrent writer
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path))


def mtime(info: Mapping[str, Any]) -> float | None:
    """Modification time (epoch seconds) from an fsspec ``info`` dict of any backend."""
    for key in ("mtime", "LastModified", "created", "last_modified"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return None


def rm_quiet(fs: fsspec.AbstractFileSystem, paths: str | list[str], recursive: bool = False) -> None:
    """Remove, ignoring what is already gone (cleanup races are harmless)."""
    if isinstance(paths, list) and not paths:
        return
    try:
        fs.rm(paths, recursive=recursive)
    except FileNotFoundError:
        if isinstance(paths, list):  # some backends stop at the first missing path
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(p, recursive=recursive)
