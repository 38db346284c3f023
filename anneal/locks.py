"""One worker per job at a time: a Redis lock with a TTL, or an OS file lock on the embedded broker.

Redis (production, workers on many machines): ``SET NX PX`` through redis-py's :class:`Lock`; the
TTL is ``job_stale_after_s`` and the job's heartbeat renews it, so a SIGKILLed holder's lock
expires about when its job is presumed lost. Embedded broker (one machine by construction: the
SQLite database is a local file): ``flock`` on ``state_dir/locks/<key>.lock``; the kernel drops
it the instant the holder dies, so a restarted worker can take the job over at once.
"""

from __future__ import annotations

import fcntl
import os
from typing import Protocol

from wsm.settings import Settings


class JobLock(Protocol):
    def acquire(self) -> bool:
        """Take the lock without waiting; False if someone else holds it."""

    def renew(self) -> None:
        """Keep holding it (called by the heartbeat)."""

    def release(self) -> None:
        """Let go (no error if it was lost meanwhile)."""


class FileJobLock:
    """``flock`` on a lock file; released by the kernel when the process dies."""

    def __init__(self, directory: str, key: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{key}.lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def renew(self) -> None:
        """A flock does not expire."""

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class RedisJobLock:
    """A Redis lock with a TTL, renewed by the job's heartbeat."""

    def __init__(self, url: str, key: str, ttl_s: float) -> None:
        import redis

        self._ttl = ttl_s
        self._client = redis.Redis.from_url(url, socket_timeout=10)
        self._lock = self._client.lock(f"wsm:lock:{key}", timeout=ttl_s, blocking=False)

    def acquire(self) -> bool:
        return bool(self._lock.acquire(blocking=False))

    def renew(self) -> None:
        self._lock.reacquire()

    def release(self) -> None:
        from redis.exceptions import LockError

        try:
            self._lock.release()
        except LockError:
            pass  # expired meanwhile: nothing to release
        finally:
            self._client.close()


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://"))


def job_lock(settings: Settings, broker_url: str, key: str) -> JobLock:
    """The lock for ``key`` appropriate to the broker in use."""
    if is_redis(broker_url):
        return RedisJobLock(
            broker_url, key, ttl_s=max(settings.job_stale_after_s, 3 * settings.job_heartbeat_s)
        )
    return FileJobLock(os.path.join(settings.state_dir, "locks"), key)
