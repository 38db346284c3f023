"""Can the store be written? The one place that turns "disk full / read-only / denied" into a reason.

Writers (the API's job records, the workers' records and merges, the trainer's checkpoints) meet
the same few ``OSError``\\ s when the store cannot take data: ``ENOSPC`` (full), ``EDQUOT`` (over
quota), ``EROFS`` (read-only) and ``EACCES``/``EPERM`` (permission denied). :func:`unwritable`
maps them to :class:`StoreUnwritable`, whose message is a short reason without the server path
the ``OSError`` carried (the API shows it to clients; the log keeps the original). Anything else
is not a "store cannot be written" condition and is left alone.

:class:`WriteProbe` answers "is the store writable right now?" cheaply for ``/healthz`` and for
new requests: a small hidden file written and removed, and for a local store at least
``store_reserve_bytes`` free (:func:`check_room`), its answer cached for ``ttl_s``; a real write
that fails marks the store unwritable at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from wsm.store import backend
from wsm.store.errors import StoreError

if TYPE_CHECKING:
    from wsm.store.files import FileStore

log = logging.getLogger(__name__)

REASONS: dict[int, str] = {
    errno.ENOSPC: "the store is full (no space left on device)",
    errno.EDQUOT: "the store's disk quota is exhausted",
    errno.EROFS: "the store is read-only",
    errno.EACCES: "permission denied writing to the store",
    errno.EPERM: "permission denied writing to the store",
}
"""errno of an ``OSError`` raised by a write -> the reason shown for it."""


class StoreUnwritable(StoreError):
    """The store cannot take writes now (full, over quota, read-only, permission denied).

    ``str()`` is the reason alone (no server path); ``errno`` the original error number.
    """

    def __init__(self, reason: str, errno_: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno_


def unwritable(exc: BaseException) -> StoreUnwritable | None:
    """The :class:`StoreUnwritable` an exception stands for, or None if it is another problem.

    Looks through ``__cause__``/``__context__`` so an ``OSError`` wrapped by a library still counts.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StoreUnwritable):
            return current
        if isinstance(current, OSError) and current.errno in REASONS:
            return StoreUnwritable(REASONS[current.errno], current.errno)
        if isinstance(current, PermissionError):  # object stores: "Access Denied" without an errno
            return StoreUnwritable(REASONS[errno.EACCES], errno.EACCES)
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Raise :class:`StoreUnwritable` (naming ``what``) for a write the store refuses."""
    try:
        yield
    except StoreUnwritable:
        raise
    except OSError as e:
        mapped = unwritable(e)
        if mapped is None:
            raise
        log.debug("cannot write %s: %s", what, e)  # the caller logs the reason; the path stays here
        raise StoreUnwritable(f"{mapped.reason}: cannot write {what}", mapped.errno) from e


def free_bytes(store: FileStore) -> int | None:
    """Bytes free for writing in a local store (None for object stores, which have no such limit)."""
    if not store.is_local:
        return None
    try:
        st = os.statvfs(store.root)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_room(store: FileStore, need: int = 0) -> None:
    """Raise :class:`StoreUnwritable` unless ``need`` bytes fit with ``store_reserve_bytes`` to spare.

    The reserve keeps room for job records on a filling disk, so a job that fails can still be
    recorded: it counts whether it is free or allocated in the reserve file (:func:`ensure_reserve`).
    """
    free = free_bytes(store)
    reserve = store.settings.store_reserve_bytes
    if free is None:
        return
    free_or_reserved = free + _reserve_size(store)
    if free_or_reserved >= need + reserve:
        return
    what = f"{need} bytes are needed and " if need else ""
    raise StoreUnwritable(
        f"{REASONS[errno.ENOSPC]}: {what}{free} bytes are free ({reserve} are kept for job records)",
        errno.ENOSPC,
    )


RESERVE_FILE = ".reserve"
"""A local store's reserve (``store_reserve_bytes`` of allocated space at its root): released when a
job record meets a full disk, so the record can still be written; recreated once space is back."""


def _reserve_path(store: FileStore) -> str:
    return os.path.join(str(store.root), RESERVE_FILE)


def _reserve_size(store: FileStore) -> int:
    try:
        return os.stat(_reserve_path(store)).st_blocks * 512
    except OSError:
        return 0


def ensure_reserve(store: FileStore) -> bool:
    """Allocate the reserve file if it is missing and twice its size is free; True if it exists now."""
    size = store.settings.store_reserve_bytes
    if not store.is_local or size <= 0:
        return False
    path = _reserve_path(store)
    if os.path.exists(path):
        return True
    free = free_bytes(store)
    if free is None or free < 2 * size:
        return False
    tmp = backend.local_tmp_name(path)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)  # blocks really allocated, not a sparse file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        log.warning("cannot allocate the store's reserve: %s", e)
        return False
    return True


def release_reserve(store: FileStore) -> bool:
    """Free the reserve (a record meets a full disk); True if there was one to free."""
    if not store.is_local:
        return False
    try:
        os.unlink(_reserve_path(store))
    except FileNotFoundError:
        return False
    log.warning(
        "the store is full: released its reserve of %d bytes for job records",
        store.settings.store_reserve_bytes,
    )
    return True


PROBE_BYTES = 4096
"""Size of the probe file: one page, roughly a job record."""


class WriteProbe:
    """Whether ``store`` takes writes, probed at most every ``ttl_s`` (thread-safe)."""

    def __init__(self, store: FileStore, ttl_s: float = 5.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._error: StoreUnwritable | None = None
        self._checked = -float("inf")

    def probe(self) -> StoreUnwritable | None:
        """None if the store is writable, else why not; probes when the cached answer is older than ``ttl_s``."""
        with self._lock:
            if time.monotonic() - self._checked < self.ttl_s:
                return self._error
        error = self._write_and_remove()
        if error is None:
            try:
                check_room(self.store)
            except StoreUnwritable as e:
                error = e
        with self._lock:
            self._error, self._checked = error, time.monotonic()
        return error

    def known_error(self) -> StoreUnwritable | None:
        """The cached answer if it is fresh and says "not writable"; never probes (for hot paths)."""
        with self._lock:
            if time.monotonic() - self._checked < self.ttl_s:
                return self._error
        return None

    def check(self) -> None:
        """Raise :class:`StoreUnwritable` if the store is known (or now found) not to take writes."""
        error = self.probe()
        if error is not None:
            raise error

    def mark(self, error: StoreUnwritable | None) -> None:
        """Record what a real write just found (None: it succeeded)."""
        with self._lock:
            if error is not None and self._error is None:
                log.error("store became unwritable: %s", error)
            elif error is None and self._error is not None:
                log.info("store is writable again")
            self._error, self._checked = error, time.monotonic()

    def _write_and_remove(self) -> StoreUnwritable | None:
        fs = self.store.fs
        path = f"{self.store.root}/{backend.TMP_PREFIX}write-probe-{uuid.uuid4().hex[:12]}"
        try:
            backend.atomic_write_bytes(fs, path, b"\0" * PROBE_BYTES)
        except OSError as e:  # any refused write counts here; the reason never carries the path
            log.warning("store write probe failed: %s", e)
            name = errno.errorcode.get(e.errno or 0, type(e).__name__)
            return unwritable(e) or StoreUnwritable(
                f"the store refused a write ({name}: {e.strerror or type(e).__name__})", e.errno
            )
        finally:
            with contextlib.suppress(Exception):
                backend.rm_quiet(fs, path)
        return None
