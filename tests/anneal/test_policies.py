"""Annealing policies (anneal/policies.py) on a synthetic run: points, the sweep that creates their
jobs, idempotency, catch-up, and the recovery sweep that runs it (anneal/runner.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from anneal import jobs, policies, recovery, resolve, submit
from anneal.jobs import WindowRequest
from anneal.policies import PolicySpec
from merger.provenance import CurveRecord
from tests.api.fixtures import M, make_run, write_checkpoint
from tests.conftest import make_settings
from theory import CurveSpec
from wsm.settings import Settings
from wsm.store import Store


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return make_settings(store_url=str(tmp_path / "store"), state_dir=str(tmp_path / "state"))


@pytest.fixture()
def store(settings: Settings) -> Store:
    s = Store(settings.store_url, settings=settings)
    make_run(s, tokens=[i * 10 * M for i in range(1, 8)], elements=256, tensors=1)  # 10M .. 70M
    return s


class Sent:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, run: str, job_id: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        with self.lock:
            self.calls.append((run, job_id))


def spec(**kwargs: object) -> PolicySpec:
    fields: dict[str, object] = {"run": "r1", "curve": CurveRecord.of(CurveSpec("1-sqrt")), "window": 20 * M}
    fields.update(every=30 * M, evaluate=False)
    fields.update(kwargs)
    return PolicySpec.model_validate(fields)


def ends(store: Store) -> list[int]:
    return sorted(r.spec.window_end for r in jobs.list_jobs(store, "r1"))


def test_due_points() -> None:
    assert policies.due_points(30, [10, 20, 30, 40, 50, 60, 70]) == [(30, 30), (60, 60)]
    # Points between checkpoints anneal at the newest checkpoint before them, once.
    assert policies.due_points(25, [10, 20, 30, 40, 50, 60, 70]) == [(25, 20), (50, 50)]
    assert policies.due_points(5, [10, 20]) == [(10, 10), (20, 20)]
    assert policies.due_points(30, [10, 20]) == [] and policies.due_points(30, []) == []
    # Linear in the checkpoints, not in the points: one token apart over a trillion tokens.
    assert policies.due_points(1, [10**12, 2 * 10**12]) == [(10**12, 10**12), (2 * 10**12, 2 * 10**12)]


def test_policy_id_is_what_it_asks_for() -> None:
    assert spec().policy_id() == spec().policy_id()
    assert spec().policy_id() != spec(every=40 * M).policy_id()
    assert spec().policy_id().startswith("policy-")


def test_sweep_creates_each_point_once(store: Store, settings: Settings) -> None:
    policies.create(store, spec())
    sent = Sent()
    created = policies.sweep(store, settings, sent)
    assert ends(store) == [30 * M, 60 * M] and len(created) == 2
    assert [job for _, job in sent.calls] == created
    assert policies.sweep(store, settings, sent) == [] and len(sent.calls) == 2  # nothing twice
    record, new = policies.create(store, spec())
    assert not new and record.policy_id == spec().policy_id()


def test_catch_up_after_downtime(store: Store, settings: Settings) -> None:
    """Points passed while no sweep ran (workers down) are all created by the next sweep."""
    policies.create(store, spec(every=10 * M))
    for tokens in (80 * M, 90 * M, 100 * M):  # the trainer went on meanwhile
        write_checkpoint(store, "r1", tokens, elements=256, tensors=1)
    policies.sweep(store, settings, Sent())
    # 10M: the window of 20M does not fit yet; every later point has its job.
    assert ends(store) == [t * M for t in range(20, 101, 10)]
    skipped = [p for p in policies.points(store, spec(every=10 * M), None) if p.spec is None]
    assert [p.tokens for p in skipped] == [10 * M] and "longer than the run" in (skipped[0].error or "")


def test_a_job_asked_elsewhere_is_not_duplicated(store: Store, settings: Settings) -> None:
    """POST /anneal for the same window first: the policy's point is that job."""
    job_spec = resolve.resolve(
        store, curve=CurveSpec("1-sqrt"), request=WindowRequest(window=20 * M, end=30 * M), evaluate=False
    )
    asked, _ = submit.submit(store, job_spec, policies._Direct(Sent()))
    policies.create(store, spec())
    created = policies.sweep(store, settings, Sent())
    assert asked.job_id not in created and len(jobs.list_jobs(store, "r1")) == 2


def test_failed_points_are_not_retried_every_sweep(store: Store, settings: Settings) -> None:
    policies.create(store, spec())
    first = policies.sweep(store, settings, Sent())
    record = jobs.load(store, "r1", first[0])
    record.state, record.stage, record.error = "failed", "failed", "out of disk"
    jobs.save(store, record)
    assert policies.sweep(store, settings, Sent()) == []
    assert jobs.load(store, "r1", first[0]).state == "failed"


def test_deleted_policy_stops(store: Store, settings: Settings) -> None:
    record, _ = policies.create(store, spec())
    policies.delete(store, record)
    assert policies.list_policies(store, "r1") == [] and policies.find_any(store, record.policy_id) is None
    assert policies.sweep(store, settings, Sent()) == []


def test_broker_down_leaves_the_job_queued_for_recovery(store: Store, settings: Settings) -> None:
    policies.create(store, spec())
    created = policies.sweep(store, settings, Sent(fail=True))  # never raises
    assert len(created) == 2
    assert {r.state for r in jobs.list_jobs(store, "r1")} == {"queued"}


def test_concurrent_sweeps_make_one_job_per_point(store: Store, settings: Settings) -> None:
    policies.create(store, spec(every=10 * M))
    sent = Sent()
    threads = [threading.Thread(target=policies.sweep, args=(store, settings, sent)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ends(store) == [t * M for t in range(20, 71, 10)]
    assert len({job for _, job in sent.calls}) == 6  # duplicate messages are possible, never jobs


def test_the_recovery_sweep_runs_policies(store: Store, settings: Settings) -> None:
    policies.create(store, spec())
    anneal, evaluate = Sent(), Sent()
    recovery.Recovery(store, settings, anneal, evaluate).sweep()
    assert len(anneal.calls) == 2 and evaluate.calls == []
    assert ends(store) == [30 * M, 60 * M]
