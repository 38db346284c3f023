"""A short mutex per job, around every read-modify-write of its record (anneal/lease.py).

The lease in the job record says who works on a job; this mutex only makes "read the record,
check the lease, write it" one step, so two workers can never both take a job. It is held for
milliseconds, never across a merge, so a holder that dies with it costs little:

* Redis (production, workers on many machines): ``SET NX PX`` through redis-py's :class:`Lock`,
  with a TTL of :data:`MUTEX_TTL_S`, after which a dead holder's mutex is free again.
* Embedded broker (one machine by construction: the SQLite database is a local file): ``flock`` on
  ``state_dir/locks/<key>.lock``; the kernel drops it the instant its holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Iterator
from typing import Any, Protocol

from wsm.settings import Settings

MUTEX_TTL_S = 30.0
"""Redis: a mutex whose holder died is free again after this long."""

WAIT_S = 10.0
"""How long a worker waits for a job's mutex before giving up (:class:`Busy`)."""


class Busy(Exception):
    """Another process holds the job's mutex for longer than :data:`WAIT_S`: try again later."""


class JobLock(Protocol):
    def acquire(self, timeout: float = 0.0) -> bool:
        """Take the mutex, waiting up to ``timeout`` seconds; False if someone else kept it."""

    def release(self) -> None:
        """Let go (no error if it was lost meanwhile)."""


class FileJobLock:
    """``flock`` on a lock file; released by the kernel when the process dies."""

    def __init__(self, directory: str, key: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{key}.lock")
        self._fd: int | None = None

    def acquire(self, timeout: float = 0.0) -> bool:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.01)
                continue
            self._fd = fd
            return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@functools.lru_cache(maxsize=4)
def _redis_client(url: str) -> Any:
    import redis

    # One client per process and URL: its connection pool is thread-safe and resets after a fork.
    return redis.Redis.from_url(url, socket_timeout=10)


class RedisJobLock:
    """A Redis lock with a short TTL (:data:`MUTEX_TTL_S`)."""

    def __init__(self, url: str, key: str) -> None:
        self._lock = _redis_client(url).lock(f"wsm:lock:{key}", timeout=MUTEX_TTL_S)

    def acquire(self, timeout: float = 0.0) -> bool:
        if timeout <= 0:
            return bool(self._lock.acquire(blocking=False))
        return bool(self._lock.acquire(blocking=True, blocking_timeout=timeout))

    def release(self) -> None:
        from redis.exceptions import LockError

        with contextlib.suppress(LockError):  # expired meanwhile: nothing to release
            self._lock.release()


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://"))


def job_lock(settings: Settings, broker_url: str, key: str) -> JobLock:
    """The mutex for ``key`` appropriate to the broker in use."""
    if is_redis(broker_url):
        return RedisJobLock(broker_url, key)
    return FileJobLock(os.path.join(settings.state_dir, "locks"), key)


@contextlib.contextmanager
def job_mutex(settings: Settings, broker_url: str, key: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the mutex of ``key`` for the block; :class:`Busy` if it stays taken ``timeout`` (:data:`WAIT_S`)."""
    lock = job_lock(settings, broker_url, key)
    if not lock.acquire(WAIT_S if timeout is None else timeout):
        raise Busy(key)
    try:
        yield
    finally:
        lock.release()
