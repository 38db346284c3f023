"""The recovery sweep: jobs whose attempt died are enqueued again, and what killed writers left is removed.

Runs in every worker (anneal/broker/worker_cli.py starts it at start-up and every
``recovery_interval_s``); the job bookkeeping it relies on (leases, stages, scratch directories)
is anneal/runner.py's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

from anneal import external, jobs, pipeline, policies
from anneal.jobs import JobRecord, utcnow
from anneal.lease import Leases
from anneal.locks import Busy
from anneal.runner import scratch_root
from wsm.settings import Settings
from wsm.store import Store
from wsm.store.writable import StoreUnwritable, ensure_reserve

log = logging.getLogger(__name__)


class Recovery:
    """Finds jobs whose attempt died (expired lease, or queued with no sign of life) and enqueues them again.

    Needed for the embedded broker, which loses a message whose consumer was SIGKILLed, and for
    Redis, which would only redeliver it after the (long) visibility timeout. Before sending, the
    sweeper stamps the record's ``enqueued_at`` under the job's mutex, so the sweepers of all
    workers together send one message per job per staleness period; a store that refuses the
    stamp gets no message (nothing could run anyway). It keeps the store's reserve for job records
    allocated (wsm/store/writable.py) and removes what killed writers left:
    scratch directories of attempts that are over (every sweep), staging of dead writers on this
    host (:meth:`startup_cleanup`) and anything older than the visibility timeout (hourly).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        anneal: Callable[[str, str], None],
        evaluate: Callable[[str, str], None],
        broker_url: str = "",
    ) -> None:
        self.store, self.settings = store, settings
        self._anneal, self._evaluate = anneal, evaluate
        self.leases = Leases(store, settings, broker_url)
        self._last_cleanup = -1e18

    def startup_cleanup(self) -> list[str]:
        """At once, at start: the staging leftovers of dead writers on this host (killed predecessors)."""
        ensure_reserve(self.store)
        removed = self.store.cleanup_dead_writers()
        if removed:
            log.info(
                "cleanup: removed %d leftover(s) of dead writers: %s", len(removed), ", ".join(removed[:10])
            )
        return removed

    def cleanup(self, every_s: float = 3600.0) -> list[str]:
        """At most every ``every_s``: remove leftovers of killed writers (a merge's staging dir).

        Only what is older than the broker visibility timeout goes: by definition no live job
        runs that long, so nothing still being written is touched. It walks the whole store,
        which is why it runs hourly rather than with every sweep.
        """
        mono = time.monotonic()
        if mono - self._last_cleanup < every_s:
            return []
        self._last_cleanup = mono
        removed = self.store.cleanup_stale(older_than=float(self.settings.broker_visibility_timeout_s))
        if removed:
            log.info("cleanup: removed %d stale leftover(s): %s", len(removed), ", ".join(removed[:10]))
        return removed

    def _scratch_entries(self) -> list[str]:
        with contextlib.suppress(OSError):
            return sorted(os.listdir(scratch_root(self.settings)))
        return []

    def _collect_scratch(self, entries: list[str], records: dict[str, JobRecord]) -> list[str]:
        """Remove the scratch dirs (listed before the records were read) of attempts that are over."""
        removed = []
        for name in entries:
            job_id, _, attempt = name.rpartition("-")
            record = records.get(job_id)
            if record is not None and record.active and record.attempt_id == attempt:
                continue
            pipeline.remove_scratch(os.path.join(scratch_root(self.settings), name))
            removed.append(name)
        if removed:
            log.info("cleanup: removed %d scratch dir(s) of finished attempts", len(removed))
        return removed

    def sweep(self) -> list[str]:
        external.sync_stale(self.store, self.settings.external_sync_ttl_s)  # new checkpoints of external runs
        stale = self.settings.job_stale_after_s
        ensure_reserve(self.store)  # back once there is room again
        entries = self._scratch_entries()
        records: dict[str, JobRecord] = {}
        resent = []
        for run in self.store.list_runs():
            for record in jobs.list_jobs(self.store, run.run):
                records[record.job_id] = record
                if self._lost(record, stale) and self._stamp(record, stale):
                    resent.append(record.job_id)
        if entries:
            self._collect_scratch(entries, records)
        policies.sweep(self.store, self.settings, self._anneal)  # the jobs of policy points passed
        return resent

    @staticmethod
    def _lost(record: JobRecord, stale: float) -> bool:
        now = utcnow()
        return (
            record.active
            and not record.held(now)
            and (now - record.last_sign_of_life()).total_seconds() >= stale
        )

    def _stamp(self, record: JobRecord, stale: float) -> bool:
        """Send the job again if it is still lost once its mutex is held; stamp the send in its record."""
        try:
            with self.leases.locked(record.run, record.job_id) as current:
                if current is None or not self._lost(current, stale):
                    return False
                idle = (utcnow() - current.last_sign_of_life()).total_seconds()
                current.enqueued_at = utcnow()
                jobs.save(self.store, current)
        except (Busy, StoreUnwritable) as e:
            log.warning("job %s looks lost but cannot be re-enqueued now: %s", record.job_id, e)
            return False
        log.warning(
            "job %s (%s) shows no sign of life for %.0fs; re-enqueueing", current.job_id, current.stage, idle
        )
        if current.state == "running" and current.model_published and current.spec.evaluate:
            self._evaluate(current.run, current.job_id)
        else:
            self._anneal(current.run, current.job_id)
        return True
