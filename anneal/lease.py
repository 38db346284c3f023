"""Leases on jobs: one attempt works on a job at a time, and a dead attempt is taken over only after expiry.

A lease (``JobRecord.lease``: holder, owner, expiry) lives in the job record in the store, so it
survives the death of the process that took it. The holder is the attempt, not the process: a split
merge's parts and final step, on any worker, carry the attempt id and renew the same lease.

* **Taking** a job (:meth:`Leases.locked` + :meth:`Leases.take`): under the job's mutex
  (anneal/locks.py) the record is read fresh; a live lease of another attempt means the message is
  a duplicate and is dropped, an expired one is taken over; the new lease is written durably before
  any work starts. A store that refuses the write refuses the claim (:class:`StoreUnwritable`), so
  nothing runs that could not be recorded.
* **Holding** it: every write of the holder goes through :meth:`Leases.write`, which re-reads the
  record under the mutex, checks the lease is still the holder's, renews its expiry and writes. A
  holder that lost its lease (it stalled past the expiry and another attempt took over) gets
  :class:`LeaseLost` and must stop without writing anything.
* **Expiry** is ``max(job_stale_after_s, 3 * job_heartbeat_s)`` after the last renewal; the
  heartbeat renews it every ``job_heartbeat_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

from anneal import jobs
from anneal.jobs import JobRecord, Lease, utcnow
from anneal.locks import job_mutex
from wsm.settings import Settings
from wsm.store import Store
from wsm.store.writable import StoreUnwritable

log = logging.getLogger(__name__)

T = TypeVar("T")


class LeaseLost(Exception):
    """The job's lease is no longer this attempt's: stop, and write nothing more to its record."""


def ttl_s(settings: Settings) -> float:
    """How long a lease holds without renewal."""
    return max(settings.job_stale_after_s, 3 * settings.job_heartbeat_s)


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Leases:
    """Reads and writes of job records under their mutex, checking leases."""

    def __init__(self, store: Store, settings: Settings, broker_url: str) -> None:
        self.store, self.settings, self.broker_url = store, settings, broker_url

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=ttl_s(self.settings))

    @contextlib.contextmanager
    def locked(self, run: str, job_id: str) -> Iterator[JobRecord | None]:
        """The job's current record (None if it has none), read while holding its mutex."""
        with job_mutex(self.settings, self.broker_url, job_id):
            yield jobs.find(self.store, run, job_id)

    def take(self, record: JobRecord, holder: str) -> None:
        """Give ``record`` to ``holder`` (call inside :meth:`locked`, then save it)."""
        now = utcnow()
        record.lease = Lease(holder=holder, owner=owner(), expires_at=now + self.ttl)
        record.heartbeat_at = now

    def write(self, record: JobRecord, holder: str, *, release: bool = False) -> None:
        """Write the holder's ``record``, renewing its lease (or giving it up with ``release``).

        Raises :class:`LeaseLost` if the stored record's lease is no longer ``holder``'s, and
        :class:`StoreUnwritable` if the store refuses the write.
        """
        with self.locked(record.run, record.job_id) as current:
            if current is None or current.lease is None or current.lease.holder != holder:
                raise LeaseLost(f"job {record.job_id}: attempt {holder} no longer holds it")
            now = utcnow()
            if release:
                record.lease = None
            else:
                record.lease = current.lease.model_copy(update={"expires_at": now + self.ttl})
            record.heartbeat_at = now
            jobs.save(self.store, record)

    def update(self, run: str, job_id: str, holder: str, change: Callable[[JobRecord], None]) -> None:
        """Apply ``change`` to the stored record and renew ``holder``'s lease (a split merge's parts)."""
        with self.locked(run, job_id) as current:
            if current is None or current.lease is None or current.lease.holder != holder:
                raise LeaseLost(f"job {job_id}: attempt {holder} no longer holds it")
            change(current)
            now = utcnow()
            current.lease = current.lease.model_copy(update={"expires_at": now + self.ttl})
            current.heartbeat_at = now
            jobs.save(self.store, current)

    def persist(self, write: Callable[[], T]) -> T:
        """Run ``write``, retrying with a growing delay while the store refuses it, up to one lease period.

        The delay starts at a fifth of a second and doubles up to a quarter of the lease (at most
        30 s); past the lease period :class:`StoreUnwritable` is raised to the caller, who gives
        the attempt up (the lease then expires and the job is taken over once the store recovers).
        """
        bound = ttl_s(self.settings)
        deadline = time.monotonic() + bound
        delay, cap = 0.2, min(30.0, max(0.2, bound / 4))
        while True:
            try:
                return write()
            except StoreUnwritable as e:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s; retrying in %.1fs", e, delay)
                time.sleep(delay)
                delay = min(cap, delay * 2)
