"""Leases: duplicates never restart a running or finished job; a dead attempt is taken over after expiry only.

The runner is driven in-process (tests/anneal/test_pipeline.py's ``InProcess`` dispatch); the lease
lives in the job record in a real local store.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import NoReturn

from anneal import jobs, runner
from anneal.jobs import Lease, utcnow
from anneal.lease import Leases
from tests.anneal.test_pipeline import BROKER, InProcess, new_job
from wsm.settings import Settings
from wsm.store import Store


def _expire(store: Store, job_id: str) -> None:
    """What a dead holder leaves: a lease whose expiry passed (nobody renews it any more)."""
    rec = jobs.load(store, "r1", job_id)
    assert rec.lease is not None
    past = utcnow() - timedelta(seconds=1)
    rec.lease = rec.lease.model_copy(update={"expires_at": past})
    rec.heartbeat_at = past - timedelta(hours=1)
    jobs.save(store, rec)


def test_backlogged_duplicates_never_restart_a_split_merge(store: Store, settings: Settings) -> None:
    split = settings.model_copy(update={"merge_split_bytes": 1, "merge_parts": 2})
    record = new_job(store)
    driver = InProcess(store, split)
    assert runner.anneal(store, split, BROKER, "r1", record.job_id, driver.dispatch()) == "split"
    # Fifteen duplicates while the parts wait in the queue: each is dropped.
    outcomes = {
        runner.anneal(store, split, BROKER, "r1", record.job_id, driver.dispatch()) for _ in range(15)
    }
    assert outcomes == {"duplicate"}
    rec = jobs.load(store, "r1", record.job_id)
    assert rec.attempts == 1 and rec.lease is not None and rec.lease.holder == rec.attempt_id
    driver.drain()
    done = jobs.load(store, "r1", record.job_id)
    assert (done.state, done.attempts, done.lease) == ("done", 1, None)
    again = {runner.anneal(store, split, BROKER, "r1", record.job_id, driver.dispatch()) for _ in range(5)}
    assert again == {"done"} and jobs.load(store, "r1", record.job_id).attempts == 1
    assert driver.splits == [2]


def test_dead_attempt_is_taken_over_after_expiry_and_its_parts_do_nothing(
    store: Store, settings: Settings
) -> None:
    split = settings.model_copy(update={"merge_split_bytes": 1, "merge_parts": 2})
    record = new_job(store)
    driver = InProcess(store, split)
    assert runner.anneal(store, split, BROKER, "r1", record.job_id, driver.dispatch()) == "split"
    first = jobs.load(store, "r1", record.job_id).attempt_id
    stale_parts = list(driver._pending)
    driver._pending.clear()  # the attempt "dies": its parts are never run by it
    assert runner.anneal(store, split, BROKER, "r1", record.job_id, driver.dispatch()) == "duplicate"
    _expire(store, record.job_id)
    assert runner.anneal(store, split, BROKER, "r1", record.job_id, driver.dispatch()) == "split"
    rec = jobs.load(store, "r1", record.job_id)
    assert rec.attempts == 2 and rec.attempt_id != first
    # The first attempt's chord arrives late: its parts skip, its final step is stale.
    for run, job_id, attempt_id, parts in stale_parts:
        results = [runner.run_part(store, split, run, job_id, attempt_id, i, parts) for i in range(parts)]
        assert all(r.skipped for r in results)
        assert (
            runner.finalize_split(store, split, BROKER, run, job_id, attempt_id, results, driver.dispatch())
            == "stale"
        )
    driver.drain()
    assert jobs.load(store, "r1", record.job_id).state == "done"


def test_a_holder_that_lost_its_lease_stops_and_writes_nothing(store: Store, settings: Settings) -> None:
    slow = settings.model_copy(update={"merge_throttle_s": 0.05})
    record = new_job(store)
    outcome: list[str] = []
    thread = threading.Thread(
        target=lambda: outcome.append(
            runner.anneal(store, slow, BROKER, "r1", record.job_id, InProcess(store, slow).dispatch())
        )
    )
    thread.start()
    try:
        deadline = utcnow() + timedelta(seconds=60)
        while jobs.load(store, "r1", record.job_id).stage != "merging":
            assert utcnow() < deadline, "the merge did not start"
        # Another worker took the job over (the holder stalled past its expiry, say).
        leases = Leases(store, slow, BROKER)
        with leases.locked("r1", record.job_id) as rec:
            assert rec is not None
            rec.lease = Lease(holder="thief", owner="elsewhere:1", expires_at=utcnow() + timedelta(hours=1))
            rec.message = "taken over"
            jobs.save(store, rec)
    finally:
        thread.join(60)
    assert outcome == ["superseded"]
    rec = jobs.load(store, "r1", record.job_id)
    assert rec.lease is not None and rec.lease.holder == "thief" and rec.message == "taken over"
    assert store.list_models("r1") == []  # the merge stopped before publishing


def test_published_model_is_reconciled_before_any_stage(store: Store, settings: Settings) -> None:
    """A model published by an attempt whose record write was lost: the record catches up, no re-merge."""
    record = new_job(store, evaluate=True)
    driver = InProcess(store, settings)
    assert runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch()) == "merged"
    rec = jobs.load(store, "r1", record.job_id)
    # Rewind the record to what a killed attempt leaves: merging, lease expired, model unknown.
    rec.stage, rec.model_published, rec.progress = "merging", False, 40.0
    rec.lease = Lease(
        holder=rec.attempt_id or "x", owner="dead:1", expires_at=utcnow() - timedelta(seconds=1)
    )
    rec.heartbeat_at = rec.enqueued_at = utcnow() - timedelta(hours=1)
    jobs.save(store, rec)
    assert runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch()) == "merged"
    rec = jobs.load(store, "r1", record.job_id)
    assert (rec.stage, rec.model_published, rec.attempts, rec.lease) == ("waiting_eval", True, 1, None)
    # A duplicate of the anneal message while the evaluation is queued does nothing.
    assert runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch()) == "duplicate"
    assert driver.evaluated == [record.job_id] * 2


def test_evaluation_duplicates_are_dropped_while_one_runs(store: Store, settings: Settings) -> None:
    record = new_job(store, evaluate=True)
    driver = InProcess(store, settings)
    runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch())
    inside = threading.Event()
    release = threading.Event()
    seen: list[str] = []

    def evaluator(*args: object, **kwargs: object) -> NoReturn:
        inside.set()
        release.wait(30)
        raise RuntimeError("stop here")

    thread = threading.Thread(
        target=lambda: seen.append(runner.evaluate(store, settings, BROKER, "r1", record.job_id, evaluator))
    )
    thread.start()
    try:
        assert inside.wait(30)
        assert runner.evaluate(store, settings, BROKER, "r1", record.job_id, evaluator) == "duplicate"
        assert runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch()) == "duplicate"
    finally:
        release.set()
        thread.join(30)
    assert seen == ["failed"]
