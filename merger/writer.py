"""Where output bytes go: sinks that publish a file only when it is complete, and small JSON files.

Names, dtypes and shapes fix every offset, so the header is written before any data and tensors
are appended as their chunks complete: nothing is held back in memory. Bytes go to a sink: a
local file written under a temporary name and renamed into place on commit (a reader never sees a
partial file), or a store publisher's streaming writer (see :mod:`merger.store_io`).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Protocol


class Sink(Protocol):
    """Where a file's bytes go: ``commit`` makes it visible, ``abort`` drops it."""

    def write(self, data: memoryview) -> int | None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class LocalFileSink:
    """A local file written under a temporary name in its final directory, renamed on commit."""

    def __init__(self, path: str, *, fsync: bool = True) -> None:
        self.path = path
        self.tmp_path = os.path.join(
            os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}"
        )
        self._fsync = fsync
        self._file = open(self.tmp_path, "wb", buffering=0)  # noqa: SIM115 - closed in commit/abort

    def write(self, data: memoryview) -> int | None:
        return self._file.write(data)

    def commit(self) -> None:
        if self._fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self.tmp_path):
            os.unlink(self.tmp_path)


def write_bytes_atomic(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Write a small file (index, DCP metadata) through a temporary name and rename it into place."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str, obj: Any, *, fsync: bool = True) -> None:
    """Write small JSON (index, manifest) through a temporary name and rename it into place."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), fsync=fsync)
