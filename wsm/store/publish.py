"""Atomic publish: stage data files (hashed while streaming), write the manifest last, then expose.

Every data file gets its sha256 (provenance) and fast checksums (xxh3 of the file and of fixed
blocks, wsm/store/checksums.py) computed from the very bytes written, so what readers verify
against is what the writer produced.

Local disk: a hidden staging dir next to the target, renamed into place once the manifest is in
it. Object stores: objects go straight under the final prefix (multipart uploads are invisible
until completed) and the manifest PUT is the moment of publication. Either way a writer killed
at any point leaves no manifest at the final location, hence nothing visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
from collections.abc import Callable
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar

from wsm.store import backend, layout
from wsm.store.checksums import ChecksumWriter
from wsm.store.errors import ArtifactExistsError, StoreError
from wsm.store.manifests import FileEntry, Manifest
from wsm.store.names import validate_name, validate_tree_path

if TYPE_CHECKING:
    from wsm.store.store import Store

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Manifest)

COPY_CHUNK = 8 * 1024 * 1024
_RESERVED_FIELDS = frozenset({"schema_version", "kind", "files", "code_version"})


class HashingWriter(io.RawIOBase):
    """A write-only stream that forwards to the backend file and computes sha256, checksums and size."""

    def __init__(
        self,
        raw: IO[bytes],
        name: str,
        fsync: bool,
        on_commit: Callable[[FileEntry], None],
        block_size: int,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._name = name
        self._fsync = fsync
        self._on_commit = on_commit
        self._sha = hashlib.sha256()
        self._checksums = ChecksumWriter(block_size)
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self._raw.write(view)
        self._sha.update(view)
        self._checksums.update(view)
        self._size += len(view)
        return len(view)

    def tell(self) -> int:
        return self._size

    def close(self) -> None:
        if self.closed:
            return
        self._raw.flush()
        if self._fsync:
            os.fsync(self._raw.fileno())  # data durable before the manifest can mention it
        self._raw.close()
        super().close()
        self._on_commit(
            FileEntry(
                name=self._name,
                size=self._size,
                sha256=self._sha.hexdigest(),
                checksums=self._checksums.result(),
            )
        )

    def abort(self) -> None:
        """Drop the file without completing it (S3: abort the multipart upload)."""
        if self.closed:
            return
        discard = getattr(self._raw, "discard", None)
        with contextlib.suppress(Exception):
            if callable(discard):
                discard()
            self._raw.close()
        super().close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Publisher(Generic[M]):
    """Context manager that publishes one artifact directory; see docs/STORE.md "Atomic publish"."""

    def __init__(
        self, store: Store, model: type[M], final_dir: str, fields: dict[str, Any], overwrite: bool
    ) -> None:
        self._store = store
        self._model = model
        self.dir = final_dir
        self._fields = fields
        self._overwrite = overwrite
        self._entries: dict[str, FileEntry] = {}
        self._open: dict[str, HashingWriter] = {}
        self._opened: set[str] = set()  # every name ever opened: abort removes even half-written ones
        self._staging: str | None = None
        self.manifest: M | None = None

    # -- writing ---------------------------------------------------------------------------
    @property
    def files(self) -> list[FileEntry]:
        return list(self._entries.values())

    def open(self, name: str, *, block_size: int | None = None) -> HashingWriter:
        """A streaming writer for data file ``name`` (large files go up as multipart on S3)."""
        return self._open_file(validate_name(name, "file name"), block_size)

    def _open_file(self, name: str, block_size: int | None = None) -> HashingWriter:
        staging = self._require_started()
        if name == layout.MANIFEST:
            raise StoreError(f"{self.dir}: {layout.MANIFEST} is written by the publisher itself")
        if name in self._entries or name in self._open:
            raise StoreError(f"{self.dir}: file {name!r} written twice")
        fs = self._store.fs
        raw = fs.open(f"{staging}/{name}", "wb", block_size=block_size or self._store.block_size)

        def commit(entry: FileEntry) -> None:
            self._open.pop(name, None)
            self._entries[name] = entry

        writer = HashingWriter(
            raw,
            name,
            fsync=self._store.is_local,
            on_commit=commit,
            block_size=self._store.checksum_block_size,
        )
        self._open[name] = writer
        self._opened.add(name)
        return writer

    def open_in_tree(self, name: str, *, block_size: int | None = None) -> HashingWriter:
        """:meth:`open` for a file of a format's directory tree (``iter_0000100/__0_0.distcp``),
        streamed rather than copied from a local tree (:meth:`put_tree`): a merge writing
        Megatron's layout (merger/store_io.py)."""
        return self._open_file(validate_tree_path(name, "file name"), block_size)

    def write_bytes(self, name: str, data: bytes) -> FileEntry:
        with self.open(name) as f:
            f.write(data)
        return self._entries[name]

    def put_file(self, name: str, local_path: str | os.PathLike[str]) -> FileEntry:
        """Stream a local file into the artifact without holding it in memory."""
        with open(local_path, "rb") as src, self.open(name) as dst:
            while chunk := src.read(COPY_CHUNK):
                dst.write(chunk)
        return self._entries[name]

    def put_tree(
        self, local_dir: str | os.PathLike[str], prefix: str = "", *, link: bool = False
    ) -> list[FileEntry]:
        """Every file under ``local_dir`` as ``prefix/<relative path>`` (a format's directory tree,
        e.g. Megatron's ``iter_0000100/``), in sorted order; each is listed in the manifest.

        ``link=True`` on a local store hard-links the files into the artifact instead of copying
        them (same filesystem; they are read once to hash), falling back to a copy.
        """
        root = os.fspath(local_dir)
        names = sorted(
            os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
            for d, _, files in os.walk(root)
            for f in files
        )
        out = []
        for rel in names:
            name = validate_tree_path(f"{prefix}/{rel}" if prefix else rel, "file name")
            src = os.path.join(root, rel)
            if not (link and self._link(name, src)):
                with open(src, "rb") as f, self._open_file(name) as dst:
                    while chunk := f.read(COPY_CHUNK):
                        dst.write(chunk)
            out.append(self._entries[name])
        return out

    def _link(self, name: str, src: str) -> bool:
        """Hard-link ``src`` into the staging dir and list it; False where that is not possible."""
        staging = self._require_started()
        if not self._store.is_local or name in self._entries or name == layout.MANIFEST:
            return False
        target = os.path.join(staging, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            return False
        self._opened.add(name)
        # A linked file is read once to get what a written one gets while it streams: sha256 and checksums.
        sha, sums, size = hashlib.sha256(), ChecksumWriter(self._store.checksum_block_size), 0
        with open(target, "rb") as f:
            while chunk := f.read(COPY_CHUNK):
                sha.update(chunk)
                sums.update(chunk)
                size += len(chunk)
        self._entries[name] = FileEntry(name=name, size=size, sha256=sha.hexdigest(), checksums=sums.result())
        return True

    def update(self, **fields: Any) -> None:
        """Set manifest fields known only at the end (timings, bytes_read, metrics...)."""
        unknown = set(fields) - set(self._model.model_fields)
        if unknown or _RESERVED_FIELDS & set(fields):
            raise TypeError(
                f"{self._model.__name__}: cannot set fields {sorted(unknown | (_RESERVED_FIELDS & set(fields)))}"
            )
        self._fields.update(fields)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Publisher[M]:
        store = self._store
        if store.exists(f"{self.dir}/{layout.MANIFEST}") and not self._overwrite:
            raise ArtifactExistsError(self.dir)
        final = store.full_path(self.dir)
        if store.is_local:
            parent, base = os.path.split(final)
            self._staging = os.path.join(parent, backend.hidden_name(backend.TMP_PREFIX, base))
            os.makedirs(self._staging)
        else:
            # Invisible first (manifest gone), then clear old or stale objects under the prefix so
            # the new artifact holds only files it lists.
            backend.rm_quiet(store.fs, f"{final}/{layout.MANIFEST}")
            leftovers = store.fs.find(final)
            if leftovers:
                log.info("publish %s: removing %d leftover object(s)", self.dir, len(leftovers))
                backend.rm_quiet(store.fs, leftovers)
            self._staging = final
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._commit()
        except BaseException:
            self._abort()
            raise

    def _require_started(self) -> str:
        if self._staging is None or self.manifest is not None:
            raise StoreError(f"{self.dir}: use the publisher inside its `with` block")
        return self._staging

    def _commit(self) -> None:
        staging = self._require_started()
        if self._open:
            raise StoreError(f"{self.dir}: files still open at commit: {sorted(self._open)}")
        manifest = self._model.model_validate({**self._fields, "files": self.files})
        if manifest.dir != self.dir:
            raise StoreError(f"manifest belongs to {manifest.dir}, not {self.dir}")
        data = manifest.model_dump_json(indent=2).encode()
        store = self._store
        if store.is_local:
            backend.atomic_write_bytes(store.fs, f"{staging}/{layout.MANIFEST}", data)
            backend.fsync_dir(staging)
            self._swap_into_place(staging, store.full_path(self.dir))
        else:
            store.fs.pipe_file(f"{staging}/{layout.MANIFEST}", data)  # the moment of publication
        self.manifest = manifest
        log.info("published %s (%d files, %d bytes)", self.dir, len(manifest.files), manifest.total_bytes)

    def _swap_into_place(self, staging: str, final: str) -> None:
        parent = os.path.dirname(final)
        trash = None
        if os.path.exists(final):
            if os.path.exists(os.path.join(final, layout.MANIFEST)) and not self._overwrite:
                raise ArtifactExistsError(self.dir)  # published concurrently since __enter__
            # Rename the old one away first: atomic, and the new one takes its place right after.
            trash = os.path.join(parent, backend.hidden_name(backend.TRASH_PREFIX, os.path.basename(final)))
            os.rename(final, trash)
        try:
            os.rename(staging, final)
        except OSError as e:
            raise ArtifactExistsError(self.dir) from e
        backend.fsync_dir(parent)
        if trash:
            shutil.rmtree(trash, ignore_errors=True)

    def _abort(self) -> None:
        for writer in list(self._open.values()):
            writer.abort()
        self._open.clear()
        if self._staging is None:
            return
        log.warning("publish %s aborted; removing staged data", self.dir)
        if self._store.is_local:
            shutil.rmtree(self._staging, ignore_errors=True)
        else:
            backend.rm_quiet(self._store.fs, [f"{self._staging}/{n}" for n in sorted(self._opened)])
        self._staging = None
