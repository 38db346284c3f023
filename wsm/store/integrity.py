"""Integrity checks of stored files against their manifest entries: size, then the fast checksums
(xxh3 per block, naming the bad byte range) where the entry has them, else sha256 (schema 1)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import IO, Any

from wsm.store.checksums import check_stream_checksums
from wsm.store.errors import IntegrityError
from wsm.store.manifests import FileEntry

CHUNK = 8 * 1024 * 1024


def check_size(path: str, entry: FileEntry, actual: int | None) -> None:
    if actual is None:
        raise IntegrityError(path, f"{entry.size} bytes", "missing file")
    if actual != entry.size:
        raise IntegrityError(path, f"{entry.size} bytes", f"{actual} bytes")


def check_chunks(path: str, entry: FileEntry, chunks: Iterable[Any]) -> None:
    """Check a whole file given as pieces in order: checksums if the entry has them, else sha256."""
    if entry.checksums is not None:
        check_size(path, entry, check_stream_checksums(path, entry, chunks))
        return
    sha = hashlib.sha256()
    size = 0
    for data in chunks:
        sha.update(data)
        size += memoryview(data).nbytes
    check_size(path, entry, size)
    digest = sha.hexdigest()
    if digest != entry.sha256:
        raise IntegrityError(path, f"sha256 {entry.sha256}", f"sha256 {digest}")


def check_bytes(path: str, entry: FileEntry, data: bytes) -> None:
    check_size(path, entry, len(data))
    view = memoryview(data)
    check_chunks(path, entry, (view[i : i + CHUNK] for i in range(0, len(view), CHUNK)))


def _read_all(f: IO[bytes], sink: IO[bytes] | None) -> Iterator[bytes]:
    while data := f.read(CHUNK):
        if sink is not None:
            sink.write(data)
        yield data


def check_stream(path: str, entry: FileEntry, f: IO[bytes], sink: IO[bytes] | None = None) -> None:
    """Read ``f`` to the end (copying into ``sink`` if given) and check it against ``entry``."""
    check_chunks(path, entry, _read_all(f, sink))
