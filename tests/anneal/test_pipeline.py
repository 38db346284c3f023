"""The anneal pipeline without a broker: anneal/pipeline.py and anneal/runner.py driven in-process.

Dispatch is replaced by direct calls, so these tests cover stage bookkeeping, idempotency, the
split (multi-part) merge, failures and the recovery sweep in milliseconds.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from safetensors.numpy import load_file

from anneal import jobs, locks, pipeline, recovery, resolve, runner
from anneal.locks import FileJobLock
from merger.engine import execute_merge
from tests.api.fixtures import M
from wsm.settings import Settings
from wsm.store import Store

BROKER = "sqla+sqlite:///unused"


class InProcess:
    """A Dispatch that runs follow-up stages synchronously (what Celery does asynchronously)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings
        self.evaluated: list[str] = []
        self.splits: list[int] = []
        self._pending: list[tuple[str, str, str, int]] = []

    def dispatch(self) -> runner.Dispatch:
        return runner.Dispatch(evaluate=self._evaluate, split=self._split)

    def _evaluate(self, run: str, job_id: str) -> None:
        self.evaluated.append(job_id)

    def _split(self, run: str, job_id: str, attempt_id: str, parts: int) -> None:
        self.splits.append(parts)
        self._pending.append((run, job_id, attempt_id, parts))  # runs after the coordinator returns

    def drain(self) -> None:
        while self._pending:
            self._run_split(*self._pending.pop(0))

    def _run_split(self, run: str, job_id: str, attempt_id: str, parts: int) -> None:
        results = [
            runner.run_part(self.store, self.settings, run, job_id, attempt_id, i, parts)
            for i in range(parts)
        ]
        runner.finalize_split(
            self.store, self.settings, BROKER, run, job_id, attempt_id, results, self.dispatch()
        )


def spec_for(
    store: Store,
    curve: str = "1-sqrt",
    *,
    window: str = "40M",
    floor: float = 0.0,
    evaluate: bool = False,
    out_format: str = "safetensors",
) -> jobs.JobSpec:
    return resolve.resolve(
        store,
        curve=resolve.curve_spec(curve, alpha=None, floor=floor),
        request=resolve.window_request(window, None, None, None),
        evaluate=evaluate,
        out_format=out_format,
    )


def new_job(
    store: Store, *, evaluate: bool = False, window: str = "40M", out_format: str = "safetensors"
) -> jobs.JobRecord:
    spec = spec_for(store, window=window, evaluate=evaluate, out_format=out_format)
    record = jobs.JobRecord(job_id=spec.job_id(), spec=spec)
    jobs.save(store, record)
    return record


def expected_weights(store: Store, spec: jobs.JobSpec) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for ck in spec.selection.sources:
        path = store.local_path(f"runs/{spec.run}/checkpoints/{ck.tokens:018d}/model.safetensors")
        for k, v in load_file(str(path)).items():
            if v.dtype == np.float32:
                out[k] = out.get(k, 0) + np.float64(ck.c) * v.astype(np.float64)
            else:
                out[k] = v
    return out


def test_same_request_same_job_and_eval_flag_changes_it(store: Store) -> None:
    a = new_job(store).spec
    b = spec_for(store, "minus_sqrt")
    c = spec_for(store, evaluate=True)
    d = spec_for(store, floor=0.1)
    assert a.job_id() == b.job_id()  # alias of the same curve
    assert a.job_id() != c.job_id() and a.model_name == c.model_name  # eval flag: other job, same model
    assert a.job_id() != d.job_id() and a.model_name != d.model_name
    assert a.selection.tokens == [70 * M, 80 * M, 90 * M, 100 * M]
    assert all(len(x.sha256) == 64 for x in a.selection.sources)


def test_single_worker_merge_publishes_and_finishes(store: Store, settings: Settings) -> None:
    record = new_job(store)
    driver = InProcess(store, settings)
    assert runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch()) == "done"
    done = jobs.load(store, "r1", record.job_id)
    assert (done.state, done.stage, done.progress, done.attempts) == ("done", "done", 100.0, 1)
    model = store.get_model("r1", record.spec.model_name)
    assert [s.tokens for s in model.sources] == record.spec.tokens
    got = load_file(str(store.local_path(f"{model.dir}/model.safetensors")))
    for name, want in expected_weights(store, record.spec).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-6)
    assert store.list_pins("r1") == []
    # Asking again: the finished job returns at once, nothing is merged again.
    assert runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch()) == "done"
    assert jobs.load(store, "r1", record.job_id).attempts == 1


def test_evaluation_is_dispatched_after_merge(store: Store, settings: Settings) -> None:
    record = new_job(store, evaluate=True)
    driver = InProcess(store, settings)
    assert runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch()) == "merged"
    assert driver.evaluated == [record.job_id]
    rec = jobs.load(store, "r1", record.job_id)
    assert (rec.state, rec.stage, rec.model_published) == ("running", "waiting_eval", True)
    assert pipeline.evaluation_targets(rec.spec) == {
        "anneal": f"runs/r1/models/{rec.spec.model_name}",
        "baseline": f"runs/r1/checkpoints/{100 * M:018d}",
    }


def test_split_merge_is_bit_identical_to_one_worker(store: Store, settings: Settings, tmp_path: Path) -> None:
    split_settings = settings.model_copy(update={"merge_split_bytes": 1, "merge_parts": 3})
    record = new_job(store)
    driver = InProcess(store, split_settings)
    assert runner.anneal(store, split_settings, BROKER, "r1", record.job_id, driver.dispatch()) == "split"
    assert jobs.load(store, "r1", record.job_id).stage == "merging"
    driver.drain()
    assert driver.splits == [3] and jobs.load(store, "r1", record.job_id).state == "done"
    model = store.get_model("r1", record.spec.model_name)
    assert model.is_sharded and len(model.weight_files) == 3
    # The same (resharded) plan executed by one process gives the same bytes.
    plan = pipeline.build_plan(store, record.spec)
    single = tmp_path / "single"
    execute_merge(plan.split(3)[0].plan, single)
    for name in model.weight_files:
        assert store.read_file(model, name) == (single / name).read_bytes(), name
    index = "model.safetensors.index.json"
    assert json.loads(store.read_file(model, index)) == json.loads((single / index).read_bytes())
    assert not any(p.name.startswith(record.job_id) for p in (Path(settings.state_dir) / "scratch").glob("*"))


@pytest.mark.parametrize("parts", [1, 3])
def test_a_torch_dist_job_publishes_what_torch_dcp_loads(
    store: Store, settings: Settings, tmp_path: Path, parts: int
) -> None:
    """``out_format=torch_dist``: another job and another model than the safetensors one, in Megatron's
    layout, read back by torch's own DCP loader; a split merge gives the same files."""
    import torch
    import torch.distributed.checkpoint as dcp

    record = new_job(store, out_format="torch_dist")
    plain = spec_for(store)
    assert (
        record.spec.job_id() != plain.job_id() and record.spec.model_name == f"{plain.model_name}-torch_dist"
    )
    if parts > 1:
        settings = settings.model_copy(update={"merge_split_bytes": 1, "merge_parts": parts})
    driver = InProcess(store, settings)
    runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch())
    driver.drain()
    assert jobs.load(store, "r1", record.job_id).state == "done"
    model = store.get_model("r1", record.spec.model_name)
    assert model.config["format"] == "torch_dist"
    # Safetensors inputs carry no iteration: Megatron's name for such a save is "release".
    assert store.read_file(model, "latest_checkpointed_iteration.txt") == b"release"
    directory = store.full_path(f"{model.dir}/release")
    want = expected_weights(store, record.spec)
    state = {k: torch.empty(v.shape, dtype=torch.from_numpy(v).dtype) for k, v in want.items()}
    dcp.load(state, checkpoint_id=str(directory))  # no process group: torch reads it as one rank
    for name, value in want.items():
        np.testing.assert_allclose(state[name].numpy(), value, rtol=1e-6, atol=1e-6, err_msg=name)
    if parts > 1:
        single = tmp_path / "single"
        execute_merge(pipeline.build_plan(store, record.spec).split(parts)[0].plan, single)
        shards = [f.name for f in model.files if f.name.endswith(".distcp")]
        assert len(shards) == parts
        for name in shards:
            assert store.read_file(model, name) == (single / name).read_bytes(), name
        assert store.read_file(model, "release/.metadata") == (single / "release/.metadata").read_bytes()


def test_corrupt_checkpoint_fails_the_job_and_publishes_nothing(store: Store, settings: Settings) -> None:
    record = new_job(store)
    path = store.local_path(f"runs/r1/checkpoints/{90 * M:018d}/model.safetensors")
    with open(str(path), "r+b") as f:  # truncate: the size no longer matches the manifest
        f.truncate(100)
    assert (
        runner.anneal(store, settings, BROKER, "r1", record.job_id, InProcess(store, settings).dispatch())
        == "failed"
    )
    rec = jobs.load(store, "r1", record.job_id)
    assert rec.state == "failed" and "model.safetensors" in (rec.error or "")
    assert store.list_models("r1") == []
    assert store.list_pins("r1") == []


def test_replaced_checkpoint_is_refused(store: Store, settings: Settings) -> None:
    record = new_job(store)
    from tests.api.fixtures import write_checkpoint

    store.delete_checkpoint("r1", 80 * M)
    write_checkpoint(store, "r1", 80 * M, seed=99)
    runner.anneal(store, settings, BROKER, "r1", record.job_id, InProcess(store, settings).dispatch())
    rec = jobs.load(store, "r1", record.job_id)
    assert rec.state == "failed" and "was replaced" in (rec.error or "")


def test_mutex_held_means_busy(store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "WAIT_S", 0.2)
    record = new_job(store)
    held = FileJobLock(os.path.join(settings.state_dir, "locks"), record.job_id)
    assert held.acquire()
    try:
        with pytest.raises(runner.Busy):
            runner.anneal(store, settings, BROKER, "r1", record.job_id, InProcess(store, settings).dispatch())
    finally:
        held.release()
    assert jobs.load(store, "r1", record.job_id).state == "queued"


def test_recovery_resends_only_stale_jobs(store: Store, settings: Settings) -> None:
    fresh = new_job(store)
    stale = new_job(store, window="30M")
    rec = jobs.load(store, "r1", stale.job_id)
    rec.state, rec.stage = "running", "merging"
    rec.heartbeat_at = rec.enqueued_at = jobs.utcnow() - timedelta(hours=1)
    jobs.save(store, rec)
    sent: list[tuple[str, str]] = []
    sweepers = [
        recovery.Recovery(
            store,
            settings,
            lambda r, j: sent.append(("anneal", j)),
            lambda r, j: sent.append(("eval", j)),
            BROKER,
        )
        for _ in range(2)  # two workers' sweepers
    ]
    assert sweepers[0].sweep() == [stale.job_id]
    assert sent == [("anneal", stale.job_id)] and fresh.job_id not in {j for _, j in sent}
    assert sweepers[1].sweep() == [] and sweepers[0].sweep() == []  # stamped: once per staleness period
    assert jobs.load(store, "r1", stale.job_id).enqueued_at > jobs.utcnow() - timedelta(minutes=1)


def test_recovery_cleans_up_killed_writers_hourly_and_only_past_the_timeout(
    store: Store, settings: Settings
) -> None:
    assert store.is_local
    models = store.full_path("runs/r1/models")
    old, young = os.path.join(models, ".tmp-anneal-x-dead"), os.path.join(models, ".tmp-anneal-y-live")
    for d in (old, young):
        os.makedirs(d)
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(b"partial")
    past = time.time() - settings.broker_visibility_timeout_s - 60
    for path in (old, os.path.join(old, "model.safetensors")):
        os.utime(path, (past, past))
    sweeper = recovery.Recovery(store, settings, lambda r, j: None, lambda r, j: None)
    assert sweeper.cleanup() == ["runs/r1/models/.tmp-anneal-x-dead"]
    assert not os.path.exists(old) and os.path.exists(young), "a write still in progress is left alone"
    os.utime(young, (past, past))
    assert sweeper.cleanup() == [], "at most once per interval"


def test_failed_evaluation_requeued_skips_the_merge(store: Store, settings: Settings) -> None:
    record = new_job(store, evaluate=True)
    driver = InProcess(store, settings)
    runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch())

    def crash(*args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("evaluator crashed")

    assert runner.evaluate(store, settings, BROKER, "r1", record.job_id, crash) == "failed"
    rec = jobs.load(store, "r1", record.job_id)
    assert (rec.state, rec.error, rec.lease) == ("failed", "RuntimeError: evaluator crashed", None)
    rec.state = "queued"  # what the API does when the same request comes again
    jobs.save(store, rec)
    assert runner.anneal(store, settings, BROKER, "r1", record.job_id, driver.dispatch()) == "merged"
    rec = jobs.load(store, "r1", record.job_id)
    assert rec.attempts == 1 and rec.stage == "waiting_eval" and driver.evaluated == [record.job_id] * 2
