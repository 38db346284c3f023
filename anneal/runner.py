"""Running jobs: claim, heartbeat, stage bookkeeping, failure and recovery, around anneal/pipeline.py.

Celery-agnostic: anneal/broker/tasks.py passes in how to enqueue the next step (``Dispatch``), so this
module can be tested without a broker. Every state change is written to the job record in the
store (anneal/jobs.py), which is what the API shows and what survives restarts.

Rules that make jobs idempotent and crash-safe:

* Work on a job needs its lease (anneal/lease.py), written durably before the work starts. A
  message for a job whose lease is live (a duplicate, a backlogged resend) or that has finished
  does nothing; an expired lease is taken over. So a duplicate never restarts a running job, and a
  dead attempt is taken over once its lease expires, and only then.
* Before any stage, the record is reconciled with the store: a model that is already published is
  never merged again, and the record says so before anything else happens.
* Every merge attempt gets a fresh ``attempt_id``, which is also its lease holder: the parts and
  the final step of a split merge carry it and do nothing once another attempt holds the job.
* The model is published atomically by the store and reused if an earlier attempt got that far.
* A failure is recorded as ``failed`` with its reason; while the store refuses the write, the
  worker retries with a growing delay for up to one lease period, never re-running the work.
* A worker that dies stops renewing its lease; :class:`anneal.recovery.Recovery` re-enqueues such jobs.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anneal import jobs, pipeline
from anneal.jobs import EvalSummary, JobRecord, utcnow
from anneal.lease import LeaseLost, Leases
from anneal.locks import Busy as Busy
from anneal.ports import Evaluator
from wsm.settings import Settings
from wsm.store import ArtifactExistsError, Store
from wsm.store.writable import StoreUnwritable, unwritable

log = logging.getLogger(__name__)

MERGE_STAGES = frozenset({"queued", "resolving", "merging", "publishing"})


@dataclass(frozen=True)
class Dispatch:
    """How the runner enqueues follow-up work (Celery signatures in production)."""

    evaluate: Callable[[str, str], None]
    """``evaluate(run, job_id)``: queue the evaluation stage."""
    split: Callable[[str, str, str, int], None]
    """``split(run, job_id, attempt_id, parts)``: run the parts, then :func:`finalize_split`."""


class RecordUnwritable(Exception):
    """The attempt could not write its record for a whole lease period: it gives up (nothing to record)."""


class Heartbeat:
    """Renews the lease and writes progress every ``job_heartbeat_s``; stage changes are written at once.

    The pipeline reports progress into memory (cheap, from the merge loop); one thread persists
    it, so a fast merge does not hammer the store and a slow evaluation still shows life. Once the
    lease is lost, :meth:`progress` raises :class:`LeaseLost`, which stops the merge.
    """

    def __init__(self, leases: Leases, record: JobRecord, holder: str) -> None:
        self.leases = leases
        self.record = record
        self.holder = holder
        self._interval = leases.settings.job_heartbeat_s
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"wsm-heartbeat-{record.job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def progress(self, percent: float) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"job {self.record.job_id}: attempt {self.holder} lost its lease")
        self.record.progress = max(0.0, min(100.0, float(percent)))

    def save(self, **changes: Any) -> None:
        """Apply ``changes`` to the record and write it now, retrying while the store refuses."""
        try:
            self.leases.persist(lambda: self._write(changes))
        except LeaseLost:
            self.lost.set()
            raise
        except StoreUnwritable as e:
            raise RecordUnwritable(str(e)) from e

    def _write(self, changes: dict[str, Any]) -> None:
        with self._mutex:
            for k, v in changes.items():
                setattr(self.record, k, v)
            self.leases.write(self.record, self.holder)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._write({})
            except LeaseLost:
                log.warning("job %s: attempt %s lost its lease; stopping", self.record.job_id, self.holder)
                self.lost.set()
                return
            except Exception as e:  # a missed heartbeat is not fatal; the next one may succeed
                log.warning("heartbeat of %s failed: %s", self.record.job_id, e)


def _reason(exc: BaseException) -> str:
    """The reason a job failed, as its record shows it."""
    if isinstance(exc, StoreUnwritable):
        return str(exc)
    store = unwritable(exc)
    if store is not None:
        return store.reason
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


def is_transient(exc: BaseException) -> bool:
    """Broker hiccups: let Celery retry rather than failing the job."""
    mod = type(exc).__module__
    return mod.startswith(("kombu", "amqp")) or (
        type(exc).__name__ in {"ConnectionError", "TimeoutError"} and mod.startswith("redis")
    )


def _unpin(store: Store, record: JobRecord) -> None:
    try:
        store.unpin(record.run, record.job_id)
    except Exception as e:  # a left pin expires by itself (anneal/submit.py, PIN_TTL)
        log.warning("could not unpin job %s: %s", record.job_id, e)


def fail(
    leases: Leases, record: JobRecord, holder: str, exc: BaseException, scratch: str | None = None
) -> str:
    """End the job as ``failed`` with a readable reason; nothing was published (atomic publish).

    Returns ``"failed"``, or ``"superseded"`` if another attempt holds the job now, or
    ``"unrecorded"`` if the store refused the record for a whole lease period (the job is then
    taken over after its lease expires, once the store takes writes again).
    """
    reason = _reason(exc)
    log.error("job %s failed: %s", record.job_id, reason, exc_info=exc)
    record.state, record.stage, record.error = "failed", "failed", reason
    record.message = "failed"
    record.finished_at = utcnow()
    try:
        leases.persist(lambda: leases.write(record, holder, release=True))
    except LeaseLost:
        log.warning("job %s: another attempt holds it; its failure here is not recorded", record.job_id)
        return "superseded"
    except StoreUnwritable as e:
        log.error("job %s: cannot record its failure (%s): %s", record.job_id, reason, e)
        return "unrecorded"
    finally:
        if scratch:
            pipeline.remove_scratch(scratch)
    _unpin(leases.store, record)
    return "failed"


def _finish(leases: Leases, record: JobRecord, holder: str) -> None:
    record.state, record.stage, record.progress, record.message = "done", "done", 100.0, "done"
    record.finished_at = utcnow()
    try:
        leases.persist(lambda: leases.write(record, holder, release=True))
    except StoreUnwritable as e:
        raise RecordUnwritable(str(e)) from e
    _unpin(leases.store, record)
    log.info("job %s done", record.job_id)


def scratch_dir(settings: Settings, job_id: str, attempt_id: str) -> str:
    return os.path.join(scratch_root(settings), f"{job_id}-{attempt_id}")


def scratch_root(settings: Settings) -> str:
    return os.path.abspath(settings.merge_scratch_dir or os.path.join(settings.state_dir, "scratch"))


def reconcile(store: Store, record: JobRecord) -> bool:
    """Make the record agree with the store before any stage; True if it changed.

    A model published by an earlier attempt whose record write was lost (killed, or the store
    refused it) makes the record say ``model_published`` and leave the merge stages.
    """
    if record.model_published or record.stage not in MERGE_STAGES:
        return False
    if pipeline.published_model(store, record.spec) is None:
        return False
    log.info("job %s: its model is already published; the record catches up", record.job_id)
    record.model_published = True
    record.progress = 100.0
    return True


def _hand_over(
    leases: Leases, record: JobRecord, dispatch: Dispatch, holder: str | None, evaluate_now: bool = True
) -> str:
    """The model is published: finish the job, or queue its evaluation (giving the lease up)."""
    record.model_published = True
    if not record.spec.evaluate:
        record.state, record.stage, record.progress, record.message = "done", "done", 100.0, "done"
        record.finished_at = utcnow()
        outcome = "done"
    else:
        record.state, record.stage = "running", "waiting_eval"
        record.progress, record.message = 0.0, "model published; evaluation queued"
        record.enqueued_at = utcnow()
        outcome = "merged"
    if holder is None:  # inside the mutex, no lease taken: write once, a refusal backs off in Celery
        record.lease = None
        jobs.save(leases.store, record)
    else:
        try:
            leases.persist(lambda: leases.write(record, holder, release=True))
        except StoreUnwritable as e:
            raise RecordUnwritable(str(e)) from e
    if outcome == "done":
        _unpin(leases.store, record)
        log.info("job %s done", record.job_id)
    elif evaluate_now:
        dispatch.evaluate(record.run, record.job_id)
    return outcome


def anneal(
    store: Store, settings: Settings, broker_url: str, run: str, job_id: str, dispatch: Dispatch
) -> str:
    """Stages 1-2 of a job (and dispatch of 3-4). Returns what happened, for logs and tests.

    Raises :class:`Busy` (the job's mutex stayed taken) and :class:`StoreUnwritable` (the claim
    could not be written): the task retries later, with a growing delay for the latter.
    """
    leases = Leases(store, settings, broker_url)
    with leases.locked(run, job_id) as record:
        if record is None:
            log.warning("job %s of run %s has no record; dropping the message", job_id, run)
            return "missing"
        if not record.active:
            return record.state
        now = utcnow()
        if record.held(now):
            log.info("job %s is held by %s; duplicate message dropped", job_id, record.lease)
            return "duplicate"
        reconcile(store, record)
        published = record.model_published
        if published:
            idle = (now - record.last_sign_of_life()).total_seconds()
            if (
                record.state == "running"
                and record.stage == "waiting_eval"
                and idle < settings.job_stale_after_s
            ):
                return "duplicate"  # its evaluation is queued
            record.state, record.error = "running", None
            outcome = _hand_over(leases, record, dispatch, holder=None, evaluate_now=False)
        else:
            holder = uuid.uuid4().hex[:12]
            record.attempts += 1
            record.attempt_id = holder
            record.state, record.error, record.split_parts = "running", None, 0
            record.stage, record.progress = "resolving", 0.0
            record.message = "checking the source checkpoints"
            leases.take(record, holder)
            jobs.save(store, record)  # the durable claim: refused, nothing runs
    if published:  # an earlier attempt merged: evaluation (dispatched outside the mutex) or done
        if outcome == "merged":
            dispatch.evaluate(run, job_id)
        return outcome
    try:
        return _merge_stage(leases, record, holder, dispatch)
    except LeaseLost:
        log.warning("job %s: attempt %s was taken over; it stops", job_id, holder)
        return "superseded"
    except RecordUnwritable as e:
        log.error("job %s: attempt %s gives up, its record cannot be written: %s", job_id, holder, e)
        return "unrecorded"
    except Exception as e:
        if is_transient(e):
            raise
        return fail(leases, record, holder, e)


def _merge_stage(leases: Leases, record: JobRecord, holder: str, dispatch: Dispatch) -> str:
    store, settings, spec = leases.store, leases.settings, record.spec
    with Heartbeat(leases, record, holder) as hb:
        if pipeline.published_model(store, spec) is None:
            plan = pipeline.build_plan(store, spec)
            parts = (
                pipeline.split(plan, settings.merge_parts)
                if plan.bytes_to_read > settings.merge_split_bytes
                else []
            )
            if len(parts) > 1:
                scratch = scratch_dir(settings, record.job_id, holder)
                pipeline.write_split_plan(parts[0].plan, scratch)
                hb.save(stage="merging", split_parts=len(parts), message=f"merging in {len(parts)} parts")
                # The lease stays with the attempt: its parts and its final step renew it.
                dispatch.split(record.run, record.job_id, holder, len(parts))
                return "split"
            hb.save(stage="merging", message=f"merging {len(spec.tokens)} checkpoints")
            on_progress = pipeline.progress_adapter(hb.progress, settings.merge_throttle_s)
            try:
                pipeline.merge(store, spec, plan, on_progress)
            except ArtifactExistsError:
                pipeline.published_model(store, spec)  # published concurrently: fine if identical
    return _hand_over(leases, record, dispatch, holder)


def run_part(
    store: Store,
    settings: Settings,
    run: str,
    job_id: str,
    attempt_id: str,
    index: int,
    parts: int,
    broker_url: str = "",
) -> pipeline.PartResult:
    """One part of a split merge. Never raises for bad input: the final step reports the error."""
    record = jobs.find(store, run, job_id)
    if record is None or record.lease is None or record.lease.holder != attempt_id or not record.active:
        return pipeline.PartResult(part=index, skipped=True)
    leases = Leases(store, settings, broker_url)
    scratch = scratch_dir(settings, job_id, attempt_id)
    done = {"percent": 0.0}
    stop, lost = threading.Event(), threading.Event()

    def report(percent: float) -> None:
        if lost.is_set():
            raise LeaseLost(f"job {job_id}: attempt {attempt_id} was taken over")
        done["percent"] = percent

    def touch(current: JobRecord) -> None:  # parts share the record: only progress, never the state
        current.progress = max(current.progress, done["percent"] / parts * (index + 1))

    def beat() -> None:
        while not stop.wait(settings.job_heartbeat_s):
            try:
                leases.update(run, job_id, attempt_id, touch)
            except LeaseLost:
                lost.set()
                return
            except Exception as e:
                log.warning("heartbeat of %s part %d failed: %s", job_id, index, e)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        return pipeline.run_part(
            scratch, index, parts, pipeline.progress_adapter(report, settings.merge_throttle_s)
        )
    except LeaseLost:
        return pipeline.PartResult(part=index, skipped=True)
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
    leases = Leases(store, settings, broker_url)
    scratch = scratch_dir(settings, job_id, attempt_id)
    with leases.locked(run, job_id) as record:
        if record is None or not record.active or record.lease is None or record.lease.holder != attempt_id:
            pipeline.remove_scratch(scratch)
            return "stale"
        leases.take(record, attempt_id)  # renewed: the parts may have taken long
        jobs.save(store, record)
    try:
        with Heartbeat(leases, record, attempt_id) as hb:
            hb.save(stage="publishing", progress=0.0, message="publishing shards")
            try:
                pipeline.publish_parts(store, record.spec, scratch, results)
            except ArtifactExistsError:
                pipeline.published_model(store, record.spec)
        pipeline.remove_scratch(scratch)
        return _hand_over(leases, record, dispatch, attempt_id)
    except LeaseLost:
        return "superseded"
    except RecordUnwritable as e:
        log.error("job %s: attempt %s gives up, its record cannot be written: %s", job_id, attempt_id, e)
        return "unrecorded"
    except Exception as e:
        if is_transient(e):
            raise
        return fail(leases, record, attempt_id, e, scratch)


def evaluate(
    store: Store, settings: Settings, broker_url: str, run: str, job_id: str, evaluator: Evaluator
) -> str:
    """Stages 3-4: evaluate the annealed model, then the WSO checkpoint at the window's end."""
    leases = Leases(store, settings, broker_url)
    with leases.locked(run, job_id) as record:
        if record is None:
            return "missing"
        if not record.active:
            return record.state
        if record.held(utcnow()):
            return "duplicate"
        reconcile(store, record)
        if not record.model_published:
            return record.stage  # a stale message: the merge is not done (the anneal message drives it)
        holder = f"eval-{uuid.uuid4().hex[:12]}"
        record.state, record.error = "running", None
        leases.take(record, holder)
        jobs.save(store, record)
    targets = pipeline.evaluation_targets(record.spec)
    try:
        with Heartbeat(leases, record, holder) as hb:
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
        _finish(leases, record, holder)
        return "done"
    except LeaseLost:
        return "superseded"
    except RecordUnwritable as e:
        log.error("job %s: evaluation gives up, its record cannot be written: %s", job_id, e)
        return "unrecorded"
    except Exception as e:
        if is_transient(e):
            raise
        return fail(leases, record, holder, e)


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
