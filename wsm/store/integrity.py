"""Integrity checks of stored files against their manifest entries (sha256 + size)."""

from __future__ import annotations

import hashlib
from typing import IO

from wsm.store.errors import IntegrityError
from wsm.store.manifests import FileEntry

CHUNK = 8 * 1024 * 1024


def check_size(path: str, entry: FileEntry, actual: int | None) -> None:
    if actual is None:
        raise IntegrityError(path, f"{entry.size} bytes", "missing file")
    if actual != entry.size:
        raise IntegrityError(path, f"{entry.size} bytes", f"{actual} bytes")


def check_bytes(path: str, entry: FileEntry, data: bytes) -> None:
    check_size(path, entry, len(data))
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise IntegrityError(path, f"sha256 {entry.sha256}", f"sha256 {digest}")


class StreamChecker:
    """Feeds chunks of a file being read and checks them against the entry at the end."""

    def __init__(self, path: str, entry: FileEntry) -> None:
        self.path = path
        self.entry = entry
        self._sha = hashlib.sha256()
        self._size = 0

    def update(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        self._size += len(chunk)

    def finish(self) -> None:
        check_size(self.path, self.entry, self._size)
        digest = self._sha.hexdigest()
        if digest != self.entry.sha256:
            raise IntegrityError(self.path, f"sha256 {self.entry.sha256}", f"sha256 {digest}")


def check_stream(path: str, entry: FileEntry, f: IO[bytes], sink: IO[bytes] | None = None) -> None:
    """Hash ``f`` to the end (copying into ``sink`` if given) and compare with ``entry``."""
    checker = StreamChecker(path, entry)
    while chunk := f.read(CHUNK):
        checker.update(chunk)
        if sink is not None:
            sink.write(chunk)
    checker.finish()
