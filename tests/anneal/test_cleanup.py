"""Prompt cleanup by the workers' recovery: scratch dirs of attempts that are over, dead writers' staging."""

from __future__ import annotations

import os
from pathlib import Path

from anneal import jobs, recovery, runner
from tests.anneal.test_pipeline import BROKER, InProcess, new_job
from wsm.settings import Settings
from wsm.store import Store


def test_sweep_removes_scratch_of_attempts_that_are_over_and_keeps_the_current_one(
    store: Store, settings: Settings
) -> None:
    split = settings.model_copy(update={"merge_split_bytes": 1, "merge_parts": 2})
    running = new_job(store)
    finished = new_job(store, window="30M")
    driver = InProcess(store, split)
    assert runner.anneal(store, split, BROKER, "r1", running.job_id, driver.dispatch()) == "split"
    current = jobs.load(store, "r1", running.job_id).attempt_id
    assert current is not None
    assert runner.anneal(store, split, BROKER, "r1", finished.job_id, driver.dispatch()) == "split"
    scratch = Path(runner.scratch_root(split))
    # What killed attempts leave: the finished job's parts never cleaned up, an older attempt, a stranger.
    for name in (
        f"{finished.job_id}-{jobs.load(store, 'r1', finished.job_id).attempt_id}",
        f"{running.job_id}-0ld0ld0ld0ld",
        "job-gone-123456789abc",
    ):
        (scratch / name).mkdir(parents=True, exist_ok=True)
        (scratch / name / "part-0.safetensors").write_bytes(b"partial")
    rec = jobs.load(store, "r1", finished.job_id)
    rec.state, rec.stage, rec.lease = "done", "done", None
    jobs.save(store, rec)
    sweeper = recovery.Recovery(store, split, lambda r, j: None, lambda r, j: None, BROKER)
    sweeper.sweep()
    assert sorted(os.listdir(scratch)) == [f"{running.job_id}-{current}"]
    driver._pending = [p for p in driver._pending if p[1] == running.job_id]
    driver.drain()  # the current attempt's parts still find their plan
    assert jobs.load(store, "r1", running.job_id).state == "done"
    sweeper.sweep()
    assert os.listdir(scratch) == []
