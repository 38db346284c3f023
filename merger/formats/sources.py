"""Byte access to checkpoint files, local or remote: the only way the merger reads data.

Local files are memory-mapped (zero-copy views, pages released once merged); remote objects are
read only in byte ranges through fsspec (``cat_file(path, start, end)``): never a whole-object
download. Every format module reads through these, so a new format gets S3 for free.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import posixpath
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from merger.errors import CorruptFileError, MergeError


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


def exists(uri: str, storage_options: Mapping[str, Any] | None) -> bool:
    if not is_remote(uri):
        return os.path.exists(local_path(uri))
    fs, path = get_fs(uri, storage_options)
    return bool(fs.exists(path))


def read_small(uri: str, storage_options: Mapping[str, Any] | None) -> bytes:
    if not is_remote(uri):
        with open(local_path(uri), "rb") as f:
            return f.read()
    fs, path = get_fs(uri, storage_options)
    return bytes(fs.cat_file(path))
