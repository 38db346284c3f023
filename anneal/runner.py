"""Running jobs: claim, heartbeat, stage bookkeeping, failure and recovery, around anneal/pipeline.py.

Celery-agnostic: anneal/broker/tasks.py passes in how to enqueue the next step (``Dispatch``), so this
module can be tested without a broker. Every state change is written to the job record in the
store (anneal/jobs.py), which is what the API shows and what survives restarts.

Rules that make jobs idempotent and crash-safe:

* A job's merge and its evaluation each run under a lock (anneal/locks.py); a second message for
  the same job finds the lock taken (retry later) or the record finished (return at once).
* Every attempt gets a fresh ``attempt_id``; parts and the final step of a split merge carry it
  and do nothing if the record has moved on to a newer attempt (a stale chord is harmless).
* The model is published atomically by the store and reused if an earlier attempt got that far.
* A worker that dies stops heartbeating; :func:`recover` re-enqueues such jobs.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anneal import external, jobs, pipeline, policies
from anneal.jobs import EvalSummary, JobRecord, utcnow
from anneal.locks import job_lock
from anneal.ports import Evaluator
from wsm.settings import Settings
from wsm.store import ArtifactExistsError, Store

log = logging.getLogger(__name__)


class Busy(Exception):
    """Another worker holds the job's lock: try again later."""


@dataclass(frozen=True)
class Dispatch:
    """How the runner enqueues follow-up work (Celery signatures in production)."""

    evaluate: Callable[[str, str], None]
    """``evaluate(run, job_id)``: queue the evaluation stage."""
    split: Callable[[str, str, str, int], None]
    """``split(run, job_id, attempt_id, parts)``: run the parts, then :func:`finalize_split`."""


class Heartbeat:
    """Writes the record's progress and heartbeat every ``job_heartbeat_s`` and renews the lock.

    The pipeline reports progress into memory (cheap, from the merge loop); one thread persists
    it, so a fast merge does not hammer the store and a slow evaluation still shows life.
    """

    def __init__(
        self, store: Store, record: JobRecord, settings: Settings, renew: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        self.record = record
        self._interval = settings.job_heartbeat_s
        self._renew = renew
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"wsm-heartbeat-{record.job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.save()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def progress(self, percent: float) -> None:
        self.record.progress = max(0.0, min(100.0, float(percent)))

    def save(self, **changes: Any) -> None:
        """Apply ``changes`` to the record and write it now (stage changes are shown at once)."""
        with self._mutex:
            for k, v in changes.items():
                setattr(self.record, k, v)
            self.record.heartbeat_at = utcnow()
            jobs.save(self.store, self.record)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.save()
                if self._renew is not None:
                    self._renew()
            except Exception:  # a missed heartbeat is not fatal; the next one may succeed
                log.warning("heartbeat of %s failed", self.record.job_id, exc_info=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"out of disk space: {exc}"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


def is_transient(exc: BaseException) -> bool:
    """Broker hiccups: let Celery retry rather than failing the job."""
    mod = type(exc).__module__
    return mod.startswith(("kombu", "amqp")) or (
        type(exc).__name__ in {"ConnectionError", "TimeoutError"} and mod.startswith("redis")
    )


def fail(store: Store, record: JobRecord, exc: BaseException, scratch: str | None = None) -> None:
    """End the job as ``failed`` with a readable reason; nothing was published (atomic publish)."""
    log.error("job %s failed: %s", record.job_id, _reason(exc), exc_info=exc)
    record.state, record.stage, record.error = "failed", "failed", _reason(exc)
    record.message = "failed"
    record.finished_at = utcnow()
    jobs.save(store, record)
    store.unpin(record.run, record.job_id)
    if scratch:
        pipeline.remove_scratch(scratch)


def finish(store: Store, record: JobRecord) -> None:
    record.state, record.stage, record.progress, record.message = "done", "done", 100.0, "done"
    record.finished_at = utcnow()
    jobs.save(store, record)
    store.unpin(record.run, record.job_id)
    log.info("job %s done", record.job_id)


def scratch_dir(settings: Settings, job_id: str, attempt_id: str) -> str:
    base = settings.merge_scratch_dir or os.path.join(settings.state_dir, "scratch")
    return os.path.join(os.path.abspath(base), f"{job_id}-{attempt_id}")


def _claim(settings: Settings, broker_url: str, key: str) -> Any:
    lock = job_lock(settings, broker_url, key)
    if not lock.acquire():
        raise Busy(key)
    return lock


def _after_merge(store: Store, record: JobRecord, dispatch: Dispatch) -> str:
    record.model_published = True
    if not record.spec.evaluate:
        finish(store, record)
        return "done"
    record.stage, record.progress, record.message = "waiting_eval", 0.0, "model published; evaluation queued"
    record.enqueued_at = utcnow()
    jobs.save(store, record)
    dispatch.evaluate(record.run, record.job_id)
    return "merged"


def anneal(
    store: Store, settings: Settings, broker_url: str, run: str, job_id: str, dispatch: Dispatch
) -> str:
    """Stages 1-2 of a job (and dispatch of 3-4). Returns what happened, for logs and tests."""
    lock = _claim(settings, broker_url, job_id)
    try:
        record = jobs.find(store, run, job_id)
        if record is None:
            log.warning("job %s of run %s has no record; dropping the message", job_id, run)
            return "missing"
        if not record.active:
            return record.state
        if record.model_published:  # an earlier attempt merged; only the evaluation is left
            record.state, record.error = "running", None
            return _after_merge(store, record, dispatch)
        record.attempts += 1
        record.attempt_id = uuid.uuid4().hex[:12]
        record.state, record.error, record.split_parts = "running", None, 0
        try:
            return _merge_stage(store, settings, record, dispatch, lock.renew)
        except Exception as e:
            if is_transient(e):
                raise
            fail(store, record, e)
            return "failed"
    finally:
        lock.release()


def _merge_stage(
    store: Store, settings: Settings, record: JobRecord, dispatch: Dispatch, renew: Callable[[], None]
) -> str:
    spec = record.spec
    with Heartbeat(store, record, settings, renew) as hb:
        hb.save(stage="resolving", progress=0.0, message="checking the source checkpoints")
        if pipeline.published_model(store, spec) is None:
            plan = pipeline.build_plan(store, spec)
            parts = (
                pipeline.split(plan, settings.merge_parts)
                if plan.bytes_to_read > settings.merge_split_bytes
                else []
            )
            if len(parts) > 1:
                assert record.attempt_id is not None
                scratch = scratch_dir(settings, record.job_id, record.attempt_id)
                pipeline.write_split_plan(parts[0].plan, scratch)
                hb.save(stage="merging", split_parts=len(parts), message=f"merging in {len(parts)} parts")
                dispatch.split(record.run, record.job_id, record.attempt_id, len(parts))
                return "split"
            hb.save(stage="merging", message=f"merging {len(spec.tokens)} checkpoints")
            on_progress = pipeline.progress_adapter(hb.progress, settings.merge_throttle_s)
            try:
                pipeline.merge(store, spec, plan, on_progress)
            except ArtifactExistsError:
                pipeline.published_model(store, spec)  # published concurrently: fine if identical
    return _after_merge(store, record, dispatch)


def run_part(
    store: Store, settings: Settings, run: str, job_id: str, attempt_id: str, index: int, parts: int
) -> pipeline.PartResult:
    """One part of a split merge. Never raises for bad input: the final step reports the error."""
    record = jobs.find(store, run, job_id)
    if record is None or record.attempt_id != attempt_id or record.state != "running":
        return pipeline.PartResult(part=index, skipped=True)
    scratch = scratch_dir(settings, job_id, attempt_id)
    done = {"percent": 0.0}

    def report(percent: float) -> None:
        done["percent"] = percent

    stop = threading.Event()

    def beat() -> None:  # parts share the record: only touch the heartbeat, never the state
        while not stop.wait(settings.job_heartbeat_s):
            try:
                current = jobs.load(store, run, job_id)
                if current.attempt_id == attempt_id and current.state == "running":
                    current.heartbeat_at = utcnow()
                    current.progress = max(current.progress, done["percent"] / parts * (index + 1))
                    jobs.save(store, current)
            except Exception:
                log.warning("heartbeat of %s part %d failed", job_id, index, exc_info=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        return pipeline.run_part(
            scratch, index, parts, pipeline.progress_adapter(report, settings.merge_throttle_s)
        )
    except Exception as e:
        if is_transient(e):
            raise
        log.error("job %s part %d failed", job_id, index, exc_info=True)
        return pipeline.PartResult(part=index, error=_reason(e))
    finally:
        stop.set()
        thread.join()


def finalize_split(
    store: Store,
    settings: Settings,
    broker_url: str,
    run: str,
    job_id: str,
    attempt_id: str,
    results: list[pipeline.PartResult],
    dispatch: Dispatch,
) -> str:
    """Final step of a split merge: publish the parts' shards with the index, atomically."""
    scratch = scratch_dir(settings, job_id, attempt_id)
    lock = _claim(settings, broker_url, job_id)
    try:
        record = jobs.find(store, run, job_id)
        if record is None or record.attempt_id != attempt_id or record.state != "running":
            pipeline.remove_scratch(scratch)
            return "stale"
        try:
            with Heartbeat(store, record, settings, lock.renew) as hb:
                hb.save(stage="publishing", progress=0.0, message="publishing shards")
                try:
                    pipeline.publish_parts(store, record.spec, scratch, results)
                except ArtifactExistsError:
                    pipeline.published_model(store, record.spec)
        except Exception as e:
            if is_transient(e):
                raise
            fail(store, record, e, scratch)
            return "failed"
        pipeline.remove_scratch(scratch)
        return _after_merge(store, record, dispatch)
    finally:
        lock.release()


def evaluate(
    store: Store, settings: Settings, broker_url: str, run: str, job_id: str, evaluator: Evaluator
) -> str:
    """Stages 3-4: evaluate the annealed model, then the WSO checkpoint at the window's end."""
    lock = _claim(settings, broker_url, f"{job_id}.eval")
    try:
        record = jobs.find(store, run, job_id)
        if record is None or record.state != "running" or not record.model_published:
            return record.state if record else "missing"
        targets = pipeline.evaluation_targets(record.spec)
        try:
            with Heartbeat(store, record, settings, lock.renew) as hb:
                for which in targets:
                    if which in record.evals:
                        continue
                    hb.save(
                        stage=f"evaluating_{which}",
                        progress=0.0,
                        message=pipeline.evaluation_message(record.spec, targets[which]),
                    )
                    manifest = pipeline.evaluate(
                        evaluator, store, record.spec, targets[which], _eval_progress(hb)
                    )
                    hb.save(evals={**record.evals, which: EvalSummary.of(manifest)})
        except Exception as e:
            if is_transient(e):
                raise
            fail(store, record, e)
            return "failed"
        finish(store, record)
        return "done"
    finally:
        lock.release()


def _eval_progress(hb: Heartbeat) -> Callable[..., None]:
    """Accepts ``(fraction)``, ``(done, total)`` or keyword forms from the evaluator."""

    def progress(*args: Any, **kwargs: Any) -> None:
        values = [
            v for v in (*args, *kwargs.values()) if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if len(values) >= 2 and values[1]:
            hb.progress(100.0 * values[0] / values[1])
        elif len(values) == 1:
            hb.progress(100.0 * values[0] if values[0] <= 1.0 else values[0])

    return progress


class Recovery:
    """Finds jobs whose worker died (stale heartbeat) and enqueues their next step again.

    Needed for the embedded broker, which loses a message whose consumer was SIGKILLed, and for
    Redis, which would only redeliver it after the (long) visibility timeout. Duplicate messages
    are harmless (locks, finished records), but one sweeper does not resend a job more than once
    per staleness period.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        anneal: Callable[[str, str], None],
        evaluate: Callable[[str, str], None],
    ) -> None:
        self.store, self.settings = store, settings
        self._anneal, self._evaluate = anneal, evaluate
        self._sent: dict[str, float] = {}
        self._last_cleanup = -1e18

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

    def sweep(self) -> list[str]:
        external.sync_stale(self.store, self.settings.external_sync_ttl_s)  # new checkpoints of external runs
        stale = self.settings.job_stale_after_s
        now, mono = utcnow(), time.monotonic()
        resent = []
        for run in self.store.list_runs():
            for record in jobs.list_jobs(self.store, run.run):
                if not record.active or (now - record.last_sign_of_life()).total_seconds() < stale:
                    continue
                if mono - self._sent.get(record.job_id, -1e18) < stale:
                    continue
                log.warning(
                    "job %s (%s) shows no sign of life for %.0fs; re-enqueueing",
                    record.job_id,
                    record.stage,
                    (now - record.last_sign_of_life()).total_seconds(),
                )
                if record.state == "running" and record.model_published and record.spec.evaluate:
                    self._evaluate(record.run, record.job_id)
                else:
                    self._anneal(record.run, record.job_id)
                self._sent[record.job_id] = mono
                resent.append(record.job_id)
        policies.sweep(self.store, self.settings, self._anneal)  # the jobs of policy points passed
        return resent
