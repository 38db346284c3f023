"""Byte-level access to a store: backend set-up, validated paths, ranged/streamed reads, atomic
single-file writes, and integrity checks of files against their manifest entries.

``Store`` (store.py) builds the artifact layer on top of this class.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import IO, Any

from wsm.settings import Settings, get_settings
from wsm.store import backend, checksums, integrity
from wsm.store.errors import ArtifactNotFoundError, IntegrityError
from wsm.store.manifests import Manifest
from wsm.store.names import validate_relpath


class FileStore:
    """Files under one root URL (local path, ``file://``, ``s3://``, ``memory://``)."""

    def __init__(
        self,
        url: str,
        *,
        settings: Settings | None = None,
        block_size: int | None = None,
        checksum_block_size: int | None = None,
        **storage_options: Any,
    ) -> None:
        settings = settings or get_settings()
        self.url = url
        self.fs, self.root = backend.make_filesystem(url, settings, storage_options)
        self.is_local = backend.is_local(self.fs)
        self.block_size = block_size or settings.store_block_size
        self.checksum_block_size = checksum_block_size or checksums.BLOCK_SIZE
        """Block size of the fast checksums of files published from now on (readers take theirs
        from each file's manifest entry)."""
        self.settings = settings

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- raw files -------------------------------------------------------------------------
    def full_path(self, path: str) -> str:
        """Backend path of a store-relative path (absolute local path, ``bucket/key``...)."""
        return f"{self.root}/{validate_relpath(path)}"

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self.full_path(path)))

    def size(self, path: str) -> int:
        try:
            return int(self.fs.size(self.full_path(path)))
        except FileNotFoundError as e:
            raise ArtifactNotFoundError(path) from e

    def read_bytes(self, path: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.full_path(path)))
        except FileNotFoundError as e:
            raise ArtifactNotFoundError(path) from e

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (one ranged GET on S3); a short read is an IntegrityError."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range offset={offset} length={length} for {path}")
        if length == 0:
            return b""
        try:
            data = bytes(self.fs.cat_file(self.full_path(path), start=offset, end=offset + length))
        except FileNotFoundError as e:
            raise ArtifactNotFoundError(path) from e
        if len(data) != length:  # the file is shorter than its reader expects: truncated
            raise IntegrityError(path, f"{length} bytes at offset {offset}", f"{len(data)} bytes")
        return data

    def open(self, path: str, *, block_size: int | None = None) -> IO[bytes]:
        """A read-only, seekable file object (no hashing: see ``verify_files`` and
        :class:`~wsm.store.checksums.BlockVerifier`)."""
        try:
            f: IO[bytes] = self.fs.open(self.full_path(path), "rb", block_size=block_size or self.block_size)
        except FileNotFoundError as e:
            raise ArtifactNotFoundError(path) from e
        return f

    def local_path(self, path: str) -> str | None:
        """The real local path (for mmap) on local stores; None on remote ones."""
        if not self.is_local:
            return None
        full = self.full_path(path)
        if not os.path.isfile(full):
            raise ArtifactNotFoundError(path)
        return full

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write one file atomically (no manifest: for artifacts use a publisher)."""
        backend.atomic_write_bytes(self.fs, self.full_path(path), data)

    def put_file(self, local_path: str | os.PathLike[str], path: str) -> None:
        """Stream a local file to ``path`` atomically (S3: multipart upload, invisible until complete)."""
        full = self.full_path(path)
        if self.is_local:
            tmp = backend.local_tmp_name(full)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            try:
                with open(local_path, "rb") as src, open(tmp, "wb") as dst:
                    while chunk := src.read(integrity.CHUNK):
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.replace(tmp, full)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            backend.fsync_dir(os.path.dirname(full))
            return
        with open(local_path, "rb") as src, self.fs.open(full, "wb", block_size=self.block_size) as dst:
            while chunk := src.read(integrity.CHUNK):
                dst.write(chunk)

    # -- integrity -------------------------------------------------------------------------
    def read_file(self, manifest: Manifest, name: str, *, verify: bool = True) -> bytes:
        path = manifest.path(name)
        data = self.read_bytes(path)
        if verify:
            integrity.check_bytes(path, manifest.file(name), data)
        return data

    def download(
        self, manifest: Manifest, name: str, local_path: str | os.PathLike[str], *, verify: bool = True
    ) -> None:
        """Stream a file to local disk, checking it on the way; nothing is left at ``local_path`` on failure."""
        path = manifest.path(name)
        tmp = backend.local_tmp_name(os.fspath(local_path))
        try:
            with self.open(path) as src, open(tmp, "wb") as dst:
                if verify:
                    integrity.check_stream(path, manifest.file(name), src, sink=dst)
                else:
                    while chunk := src.read(integrity.CHUNK):
                        dst.write(chunk)
            os.replace(tmp, local_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def verify(self, manifest: Manifest, *, full: bool = True, names: Iterable[str] | None = None) -> None:
        """Check files against the manifest: sizes with one listing, and their content too when ``full``
        (the fast checksums where the manifest has them, else sha256)."""
        wanted = [manifest.file(n) for n in names] if names is not None else manifest.files
        base = self.full_path(manifest.dir)
        try:
            if any("/" in e.name for e in wanted):  # a format's directory tree: one recursive listing
                found = self.fs.find(base, detail=True)
                listing = [{**info, "name": path} for path, info in found.items()]
            else:
                listing = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            listing = []
        marker = f"{manifest.dir}/"  # names relative to the artifact, whatever the backend's path form
        sizes = {
            str(i["name"]).rstrip("/").rsplit(marker, 1)[-1]: int(i.get("size") or 0)
            for i in listing
            if i.get("type") != "directory"
        }
        for entry in wanted:
            integrity.check_size(manifest.path(entry.name), entry, sizes.get(entry.name))
        if full:
            for entry in wanted:
                with self.open(manifest.path(entry.name)) as f:
                    integrity.check_stream(manifest.path(entry.name), entry, f)

    def verify_files(self, manifest: Manifest, names: Iterable[str] | None = None) -> None:
        """Stream every listed file (or ``names``) and check size and content against the manifest.

        The one call for a reader about to use whole files (a resume, an evaluation, an export):
        a mismatch raises :class:`IntegrityError` naming the file and, with checksums, the byte range.
        """
        self.verify(manifest, full=True, names=names)

    def verified_local_path(self, manifest: Manifest, name: str, directory: str | os.PathLike[str]) -> str:
        """A local path holding file ``name`` of ``manifest``, verified against the manifest.

        Local stores: the file itself, after a streaming check (no copy). Remote stores: a copy
        downloaded into ``directory``, checked while it streams (nothing is left on failure).
        """
        path = self.local_path(manifest.path(name))
        if path is not None:
            self.verify_files(manifest, [name])
            return path
        target = os.path.join(os.fspath(directory), name)
        self.download(manifest, name, target)
        return target
