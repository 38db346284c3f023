"""Failures that tell the truth when the store refuses writes (full, read-only), runner in-process.

The store is ``quota://`` (tests/faultfs.py): fsspec's memory filesystem raising the kernel's
``ENOSPC`` past a byte quota and ``EROFS`` while read-only. Process-level trials on a real tmpfs
are in tests/api/test_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anneal import jobs, pipeline, recovery, runner
from anneal.jobs import utcnow
from tests.anneal.test_pipeline import BROKER, InProcess, new_job
from tests.api.fixtures import make_run
from tests.conftest import make_settings
from tests.faultfs import QuotaFileSystem, can_mount, quota_url, tmpfs
from wsm.settings import Settings
from wsm.store import Store
from wsm.store.writable import RESERVE_FILE, StoreUnwritable, WriteProbe, ensure_reserve


@pytest.fixture()
def qsettings(tmp_path: Path) -> Settings:
    # A lease of one second: a worker that cannot write its record gives up after about that long.
    return make_settings(
        store_url=quota_url(),
        state_dir=str(tmp_path / "state"),
        job_heartbeat_s=0.05,
        job_stale_after_s=1.0,
    )


@pytest.fixture()
def qstore(qsettings: Settings) -> Iterator[Store]:
    QuotaFileSystem.reset()
    store = Store(qsettings.store_url, settings=qsettings)
    make_run(store)
    yield store
    QuotaFileSystem.reset()


@pytest.fixture()
def merges(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the merges the runner starts."""
    seen: list[str] = []
    real = pipeline.merge

    def counting(*args: Any, **kwargs: Any) -> Any:
        seen.append("merge")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "merge", counting)
    return seen


def _model_files(store: Store) -> list[str]:
    return [str(p) for p in store.fs.find(store.full_path("runs/r1/models"))]


def test_merge_on_a_full_store_is_recorded_failed_with_its_reason(
    qstore: Store, qsettings: Settings, merges: list[str]
) -> None:
    record = new_job(qstore)
    fs: Any = qstore.fs
    QuotaFileSystem.quota_bytes = fs.used() + 24 * 1024  # room for records, not for a 64 KB model
    outcome = runner.anneal(
        qstore, qsettings, BROKER, "r1", record.job_id, InProcess(qstore, qsettings).dispatch()
    )
    assert outcome == "failed" and merges == ["merge"]
    rec = jobs.load(qstore, "r1", record.job_id)
    assert rec.state == "failed" and rec.error == "the store is full (no space left on device)"
    assert rec.lease is None and qstore.list_models("r1") == [] and _model_files(qstore) == []


def test_read_only_store_refuses_the_claim_and_nothing_runs(
    qstore: Store, qsettings: Settings, merges: list[str]
) -> None:
    record = new_job(qstore)
    QuotaFileSystem.read_only = True
    with pytest.raises(StoreUnwritable, match="read-only"):
        runner.anneal(qstore, qsettings, BROKER, "r1", record.job_id, InProcess(qstore, qsettings).dispatch())
    rec = jobs.load(qstore, "r1", record.job_id)
    assert (rec.state, rec.attempts, rec.lease) == ("queued", 0, None) and merges == []
    QuotaFileSystem.read_only = False
    assert (
        runner.anneal(qstore, qsettings, BROKER, "r1", record.job_id, InProcess(qstore, qsettings).dispatch())
        == "done"
    )


def _failing_merge_that_freezes_the_store(
    monkeypatch: pytest.MonkeyPatch, thaw_after_s: float | None
) -> list[str]:
    """A merge that fails; the first one leaves the store read-only, until ``thaw_after_s`` if given."""
    seen: list[str] = []

    def merge(*args: Any, **kwargs: Any) -> Any:
        seen.append("merge")
        if len(seen) > 1:
            raise RuntimeError("the merge broke")
        QuotaFileSystem.read_only = True
        if thaw_after_s is not None:
            threading.Timer(thaw_after_s, lambda: setattr(QuotaFileSystem, "read_only", False)).start()
        raise RuntimeError("the merge broke")

    monkeypatch.setattr(pipeline, "merge", merge)
    return seen


def test_failure_is_recorded_as_soon_as_the_record_can_be_written(
    qstore: Store, qsettings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _failing_merge_that_freezes_the_store(monkeypatch, thaw_after_s=0.4)
    record = new_job(qstore)
    started = utcnow()
    outcome = runner.anneal(
        qstore, qsettings, BROKER, "r1", record.job_id, InProcess(qstore, qsettings).dispatch()
    )
    assert outcome == "failed" and seen == ["merge"]
    rec = jobs.load(qstore, "r1", record.job_id)
    assert (rec.state, rec.error, rec.attempts) == ("failed", "RuntimeError: the merge broke", 1)
    assert rec.finished_at is not None and rec.finished_at >= started


def test_worker_that_cannot_record_gives_up_and_never_reruns_the_merge_meanwhile(
    qstore: Store, qsettings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _failing_merge_that_freezes_the_store(monkeypatch, thaw_after_s=None)
    record = new_job(qstore)
    driver = InProcess(qstore, qsettings)
    # The store stays read-only: the failure is retried with a growing delay for one lease period.
    assert runner.anneal(qstore, qsettings, BROKER, "r1", record.job_id, driver.dispatch()) == "unrecorded"
    stuck = jobs.load(qstore, "r1", record.job_id)
    assert stuck.stage == "merging" and stuck.lease is not None
    # Messages meanwhile cannot claim it, before its lease expires (duplicates) or after: no merge runs.
    assert runner.anneal(qstore, qsettings, BROKER, "r1", record.job_id, driver.dispatch()) in ("duplicate",)
    assert stuck.lease is not None
    while utcnow() <= stuck.lease.expires_at:
        time.sleep(0.05)
    for _ in range(3):
        with pytest.raises(StoreUnwritable):
            runner.anneal(qstore, qsettings, BROKER, "r1", record.job_id, driver.dispatch())
    assert seen == ["merge"]
    sweeper = recovery.Recovery(qstore, qsettings, lambda r, j: None, lambda r, j: None, BROKER)
    assert sweeper.sweep() == []  # nothing is resent while the store refuses the stamp
    QuotaFileSystem.read_only = False
    assert runner.anneal(qstore, qsettings, BROKER, "r1", record.job_id, driver.dispatch()) == "failed"
    rec = jobs.load(qstore, "r1", record.job_id)
    assert (rec.state, rec.error, rec.attempts, seen) == (
        "failed",
        "RuntimeError: the merge broke",
        2,
        ["merge"] * 2,
    )


def test_write_probe_reports_full_and_read_only_without_paths(qstore: Store) -> None:
    probe = WriteProbe(qstore, ttl_s=0)
    assert probe.probe() is None
    fs: Any = qstore.fs
    QuotaFileSystem.quota_bytes = fs.used() + 100
    full = probe.probe()
    assert full is not None and full.reason == "the store is full (no space left on device)"
    QuotaFileSystem.quota_bytes, QuotaFileSystem.read_only = None, True
    ro = probe.probe()
    assert ro is not None and str(ro) == "the store is read-only" and "/" not in str(ro)
    QuotaFileSystem.read_only = False
    assert probe.probe() is None


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root or CAP_SYS_ADMIN")
def test_merge_that_would_eat_the_reserve_fails_at_once_and_is_recorded(tmp_path: Path) -> None:
    """On a real disk: a model that would not leave the reserve free fails before writing a byte."""
    with tmpfs(tmp_path / "mnt", 16 * 1024 * 1024) as mount:
        settings = make_settings(
            store_url=str(mount.path / "store"), state_dir=str(tmp_path / "state"), job_heartbeat_s=0.05
        )
        store = Store(settings.store_url, settings=settings)
        make_run(store)
        free = os.statvfs(mount.path).f_bavail * os.statvfs(mount.path).f_frsize
        tight = settings.model_copy(update={"store_reserve_bytes": free - 16 * 1024})  # a model needs ~65 kB
        store = Store(tight.store_url, settings=tight)
        record = new_job(store)
        assert (
            runner.anneal(store, tight, BROKER, "r1", record.job_id, InProcess(store, tight).dispatch())
            == "failed"
        )
        rec = jobs.load(store, "r1", record.job_id)
        assert rec.state == "failed" and (rec.error or "").startswith("the store is full")
        assert "bytes are needed" in (rec.error or "") and "kept for job records" in (rec.error or "")
        assert store.list_models("r1") == [] and not list(Path(store.root, "runs/r1/models").glob("*"))


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root or CAP_SYS_ADMIN")
def test_reserve_lets_a_failure_be_recorded_on_a_full_disk(tmp_path: Path) -> None:
    """A disk filled to the last byte: a job's failure is still recorded (from the reserve), a new job is not."""
    with tmpfs(tmp_path / "mnt", 8 * 1024 * 1024) as mount:
        settings = make_settings(
            store_url=str(mount.path / "store"),
            state_dir=str(tmp_path / "state"),
            store_reserve_bytes=256 * 1024,
        )
        store = Store(settings.store_url, settings=settings)
        make_run(store)
        record = new_job(store)
        assert ensure_reserve(store) and (Path(store.root) / RESERVE_FILE).stat().st_size == 256 * 1024
        with open(mount.path / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        spec = jobs.load(store, "r1", record.job_id).spec
        other = jobs.JobRecord(job_id="job-new", spec=spec)
        with pytest.raises(StoreUnwritable, match="full"):
            jobs.save(store, other, reserve=False)  # new work never takes the reserve
        rec = jobs.load(store, "r1", record.job_id)
        rec.state, rec.error = "failed", "the store is full (no space left on device)"
        jobs.save(store, rec)  # an accepted job's failure does
        assert jobs.load(store, "r1", record.job_id).state == "failed"
        assert not (Path(store.root) / RESERVE_FILE).exists()
        (mount.path / "filler").unlink()
        recovery.Recovery(store, settings, lambda r, j: None, lambda r, j: None, BROKER).sweep()
        assert (Path(store.root) / RESERVE_FILE).exists(), "allocated again once there is room"
