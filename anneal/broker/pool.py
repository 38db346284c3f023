"""Celery's prefork pool with locks that die with their holder, so a killed pool child cannot wedge the worker.

The cause of the wedge. Without an event loop (the embedded SQLite transport is not asynchronous),
Celery runs billiard's *blocking* pool: every child reads tasks from one shared pipe under one
shared ``multiprocessing.Lock`` (a POSIX semaphore), and an idle child blocks in ``recv`` while
holding it. SIGKILL that child and the semaphore is never released: its replacement, and every other
child, wait on it forever, and new jobs stay queued. Results go back the same way through a second
shared pipe under a second semaphore, held by a child while it sends (a busy child killed then wedges
the result path).

The fix: the same pool with those two locks replaced by :class:`DeathSafeLock`, a POSIX record lock
(``fcntl.lockf``) on an anonymous temporary file. The kernel drops a record lock the moment its
holder exits, however it exits, and a forked child does not inherit its parent's record locks. A
``threading.Lock`` per process adds mutual exclusion between threads of one process (record locks
are per process). With Redis, Celery uses its asynchronous pool (one pipe per child, no shared
lock); :class:`TaskPool` changes nothing there.

Only the ``fork`` start method (the default on Linux) is covered: the lock travels to the children
as an inherited file descriptor.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
import time
from typing import Any

from billiard import get_start_method
from billiard.pool import Pool as BlockingPool
from billiard.queues import SimpleQueue
from celery.concurrency.prefork import TaskPool as PreforkTaskPool

log = logging.getLogger(__name__)


class DeathSafeLock:
    """A lock shared by a process and its forked children, released by the kernel if the holder dies.

    Same interface as ``multiprocessing.Lock`` (``acquire(block, timeout)``, ``release``, context
    manager). Not re-entrant.
    """

    def __init__(self) -> None:
        # An unlinked file: nothing on disk to clean up; children reach it through the inherited fd.
        fd, path = tempfile.mkstemp(prefix="wsm-pool-lock-")
        os.unlink(path)
        self._fd = fd
        self._pid = os.getpid()
        self._mutex = threading.Lock()

    def _local_mutex(self) -> threading.Lock:
        # A child forked while a parent thread held the mutex inherits it locked: start afresh.
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._mutex = pid, threading.Lock()
        return self._mutex

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        mutex = self._local_mutex()
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if not mutex.acquire(block, -1 if timeout is None or not block else max(0.0, timeout)):
            return False
        try:
            if block and deadline is None:
                fcntl.lockf(self._fd, fcntl.LOCK_EX)
                return True
            while True:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except OSError:  # EACCES/EAGAIN: held by another process
                    if not block or (deadline is not None and time.monotonic() >= deadline):
                        mutex.release()
                        return False
                    time.sleep(0.005)
        except BaseException:
            mutex.release()
            raise

    def release(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        self._local_mutex().release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class DeathSafeQueue(SimpleQueue):  # type: ignore[misc]
    """billiard's locked pipe, with locks that a killed holder cannot keep."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rlock = DeathSafeLock()
        self._wlock = DeathSafeLock()


class DeathSafeBlockingPool(BlockingPool):  # type: ignore[misc]
    """billiard's blocking pool whose shared task and result pipes use :class:`DeathSafeQueue`."""

    def _setup_queues(self) -> None:
        if get_start_method() != "fork":
            log.warning(
                "pool start method %s: the pool's pipes keep billiard's own locks", get_start_method()
            )
            super()._setup_queues()
            return
        ctx = self._ctx
        self._inqueue = DeathSafeQueue(ctx=ctx)
        self._outqueue = DeathSafeQueue(ctx=ctx)
        self._quick_put = self._inqueue._writer.send
        self._quick_get = self._outqueue._reader.recv

        def _poll_result(timeout: float) -> tuple[bool, Any]:
            if self._outqueue._reader.poll(timeout):
                return True, self._quick_get()
            return False, None

        self._poll_result = _poll_result


class TaskPool(PreforkTaskPool):  # type: ignore[misc]
    """``--pool prefork`` of ``wsm worker``: Celery's prefork pool with :class:`DeathSafeBlockingPool`."""

    BlockingPool = DeathSafeBlockingPool


POOL = f"{__name__}:TaskPool"
"""The ``worker_pool`` setting that selects :class:`TaskPool`."""
