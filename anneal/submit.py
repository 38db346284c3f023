"""Creating jobs: one record per job id, pinned checkpoints, then one message to the broker.

Idempotent: the job id is derived from the request's inputs (anneal/jobs.py), so asking twice
returns the existing job. Concurrent identical requests in one API process are serialised per
job id (only one creates the record and enqueues); across API processes or replicas a duplicate
message is harmless because the worker locks the job and finds it finished or running.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from datetime import timedelta
from typing import Protocol

from anneal import jobs
from anneal.jobs import JobRecord, JobSpec, utcnow
from wsm.store import Store
from wsm.store.writable import StoreUnwritable, WriteProbe, writing

PIN_TTL = timedelta(days=7)
"""Safety net: a pin of a job that crashed without cleanup stops protecting after a week."""

_locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
_locks_guard = threading.Lock()


class Outbox(Protocol):
    """Where an accepted job's message goes: the API's :class:`~anneal.outbox.Publisher`, or a
    worker's direct enqueue (anneal/policies.py)."""

    def check(self) -> None:
        """Raise :class:`~anneal.errors.BrokerUnavailable` when a new job could not be sent."""

    def submit(self, run: str, job_id: str) -> None:
        """Send (or arrange to send) the message of a job whose record is written."""


def _lock_for(job_id: str) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(job_id)
        if lock is None:
            lock = threading.Lock()
            _locks[job_id] = lock
        return lock


def submit(
    store: Store, spec: JobSpec, publisher: Outbox, probe: WriteProbe | None = None
) -> tuple[JobRecord, bool]:
    """The job for ``spec`` and whether this call created (or restarted) it.

    A queued, running or done job is returned as is; a failed one is queued again. A new job
    needs a reachable broker (else :class:`BrokerUnavailable`) and a store that takes writes with
    room to spare (else :class:`StoreUnwritable`, from ``probe`` or from the writes themselves);
    either way nothing is acknowledged. Its checkpoints are pinned, so retention cannot delete
    them under the job, and its record is written durably; that is the acknowledgement. The
    broker message follows from the publisher's thread (anneal/outbox.py says why that is safe).
    """
    job_id = spec.job_id()
    lock = _lock_for(job_id)
    with lock:
        existing = jobs.find(store, spec.run, job_id)
        if existing is not None and existing.state != "failed":
            return existing, False
        if probe is not None:
            probe.check()  # cached: a probe write (and the free space) at most every few seconds
        publisher.check()
        record = existing or JobRecord(job_id=job_id, spec=spec)
        record.state, record.stage, record.progress = "queued", "queued", 0.0
        record.error, record.message, record.finished_at = None, "waiting for a merge worker", None
        record.enqueued_at, record.lease = utcnow(), None
        try:
            with writing(f"the pin of job {job_id}"):
                store.pin(spec.run, job_id, spec.tokens, ttl=PIN_TTL)
            jobs.save(store, record, reserve=False)
        except StoreUnwritable as e:
            if probe is not None:
                probe.mark(e)
            _unpin_quietly(store, spec.run, job_id)
            raise
        if probe is not None:
            probe.mark(None)
        publisher.submit(spec.run, job_id)
        return record, True


def _unpin_quietly(store: Store, run: str, job_id: str) -> None:
    """Take back the pin of a job whose record could not be written (a failed job has none of its own)."""
    with contextlib.suppress(Exception):  # the store refuses writes: the pin expires by itself (PIN_TTL)
        store.unpin(run, job_id)


def find_job(store: Store, job_id: str) -> JobRecord | None:
    """The record of ``job_id`` in whichever run holds it."""
    for run in store.list_runs():
        record = jobs.find(store, run.run, job_id)
        if record is not None:
            return record
    return None
