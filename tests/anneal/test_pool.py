"""The worker pool's locks die with their holder (anneal/broker/pool.py), unlike multiprocessing's.

The worker-level cases (an idle or busy pool child, or the main process, SIGKILLed under a real
``wsm worker``) are in tests/api/test_worker_kills.py; these pin the mechanism down in seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

import pytest

from anneal.broker.pool import DeathSafeBlockingPool, DeathSafeLock


def _held_by_a_killed_child(lock: Any) -> None:
    """Fork a child that takes ``lock`` and blocks; SIGKILL it while it holds the lock."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: take the lock, say so, wait to be killed
        try:
            lock.acquire()
            os.write(w, b"x")
            time.sleep(120)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    assert not lock.acquire(True, 0.2), "the child holds it"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_death_safe_lock_is_free_once_its_holder_is_killed() -> None:
    lock = DeathSafeLock()
    _held_by_a_killed_child(lock)
    assert lock.acquire(True, 10)
    assert not lock.acquire(False)  # and still a lock: not re-entrant, exclusive
    lock.release()
    with lock:
        pass


def test_multiprocessing_lock_stays_held_by_a_killed_child() -> None:
    """The cause of the wedge: a POSIX semaphore is never given back by a dead holder."""
    lock = multiprocessing.get_context("fork").Lock()
    _held_by_a_killed_child(lock)
    assert not lock.acquire(True, 0.5)


def _pid() -> int:
    return os.getpid()


@pytest.mark.parametrize("processes", [1, 2])
def test_pool_replaces_killed_idle_children_and_keeps_working(processes: int) -> None:
    pool = DeathSafeBlockingPool(processes=processes)
    try:
        first = {pool.apply_async(_pid).get(timeout=30) for _ in range(4)}
        for pid in first:  # idle children: one waits in recv holding the task pipe's read lock
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            pids = {p.pid for p in pool._pool if p.is_alive()}
            if len(pids) == processes and not pids & first:
                break
            assert time.monotonic() < deadline, "the pool did not replace its children"
            time.sleep(0.1)
        later = {pool.apply_async(_pid).get(timeout=30) for _ in range(4)}
        assert later and not later & first
    finally:
        pool.terminate()
