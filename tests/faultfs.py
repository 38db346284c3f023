"""Stores that refuse writes, for fault tests: a real size-limited or read-only mount, or an fsspec stand-in.

* :func:`tmpfs` mounts a tmpfs of a given size (``ENOSPC`` once full) and can remount it read-only
  (``EROFS``): the kernel's own errors, seen by every process (API, workers) using the store. It
  needs the right to mount (root or CAP_SYS_ADMIN); :func:`can_mount` tells.
* :class:`QuotaFileSystem` (``quota://``) is the FUSE-free stand-in for one process: fsspec's memory
  filesystem that raises ``OSError(ENOSPC)`` once its files would exceed ``quota_bytes`` and
  ``OSError(EROFS)`` for any change while ``read_only``. A store on it takes the object-store code
  paths (the manifest written last is the moment of publication), not the local ones.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import fsspec
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem


def _enospc(path: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _erofs(path: str) -> OSError:
    return OSError(errno.EROFS, os.strerror(errno.EROFS), path)


class _QuotaFile(MemoryFile):  # type: ignore[misc]
    def write(self, data: Any) -> int:
        fs: QuotaFileSystem = self.fs
        fs._check(self.path, grow=len(memoryview(data).cast("B")), current=self.size - self.tell())
        return int(super().write(data))


class QuotaFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """A memory filesystem with a byte quota and a read-only switch (class-wide: set, then reset)."""

    protocol = "quota"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    quota_bytes: ClassVar[int | None] = None
    read_only: ClassVar[bool] = False

    @classmethod
    def reset(cls) -> None:
        cls.store.clear()
        cls.pseudo_dirs[:] = [""]
        cls.quota_bytes, cls.read_only = None, False

    def used(self) -> int:
        return sum(f.size for f in self.store.values())

    def _check(self, path: str, grow: int, current: int = 0) -> None:
        if self.read_only:
            raise _erofs(path)
        # ``current``: bytes of this file the write overwrites rather than adds.
        if self.quota_bytes is not None and self.used() + max(0, grow - current) > self.quota_bytes:
            raise _enospc(path)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode in {"wb", "w+b", "xb", "x+b", "ab", "a+b", "r+b"}:
            stripped = self._strip_protocol(path)
            data = kwargs.get("data") or b""
            old = self.store[stripped].size if stripped in self.store and "w" in mode else 0
            self._check(stripped, len(data), old)
            if "w" in mode or "x" in mode:
                if "x" in mode and self.exists(stripped):
                    raise FileExistsError(stripped)
                f = _QuotaFile(self, stripped, data)
                f.commit()
                return f
        return super()._open(path, mode, **kwargs)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        if self.read_only:
            raise _erofs(path)
        super().mkdir(path, create_parents, **kwargs)

    def _rm(self, path: str) -> None:
        if self.read_only:
            raise _erofs(path)
        super()._rm(path)

    def rmdir(self, path: str) -> None:
        if self.read_only:
            raise _erofs(path)
        super().rmdir(path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src = self._strip_protocol(path1)
        self._check(path2, self.store[src].size if src in self.store else 0)
        super().cp_file(path1, path2, **kwargs)


fsspec.register_implementation("quota", QuotaFileSystem, clobber=True)


def quota_url() -> str:
    """A fresh ``quota://`` store root."""
    return f"quota://wsm-{uuid.uuid4().hex[:12]}"


@functools.lru_cache(maxsize=1)
def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root, or CAP_SYS_ADMIN)."""
    probe = Path(f"/tmp/wsm-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
        if ok:
            _run("umount", str(probe))
        return ok
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def _run(*argv: str) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Mount:
    """A mounted tmpfs: its path, and switches between read-write and read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def resize(self, size_bytes: int) -> None:
        """Grow or shrink the file system (not below what it holds)."""
        if not _run("mount", "-o", f"remount,size={size_bytes}", str(self.path)):
            raise RuntimeError(f"cannot resize {self.path} to {size_bytes} bytes")

    def read_only(self, on: bool = True) -> None:
        if not _run("mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)):
            raise RuntimeError(f"cannot remount {self.path} {'ro' if on else 'rw'}")


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Mount]:
    """A tmpfs of ``size_bytes`` at ``path`` for the block (lazily unmounted after it)."""
    path.mkdir(parents=True, exist_ok=True)
    if not _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path)):
        raise RuntimeError(f"cannot mount a tmpfs at {path} (needs root or CAP_SYS_ADMIN)")
    try:
        yield Mount(path)
    finally:
        _run("umount", "-l", str(path))
