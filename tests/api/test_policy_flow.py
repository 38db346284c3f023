"""Annealing policies end to end, with real processes: a tiny run trains (``wsm train``) while a
worker (``wsm worker``) anneals and evaluates at every ``every`` tokens on its own.

1. The policy fills the frontier while the trainer runs; a real decay twin (``wsm train branch``)
   then gives the pairing; the API serves both and the browser draws them.
2. Every component is killed mid-policy (SIGKILL: trainer, worker; the API is rebuilt) and
   restarted: no point is lost, none gets two jobs, two models or two evaluations.

Checkpoints take 3 s to publish here (the trainer's test hook), so training lasts long enough for
the worker's sweep (every second) to act while it runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from anneal import jobs
from anneal.broker.enqueue import CeleryEnqueuer
from api.app import create_app
from tests.api.conftest import TINY_EVAL
from tests.api.worker import ROOT, Worker, free_port, service_env, wait_for
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store

pytestmark = pytest.mark.slow

RUN = "tiny"
SAVE_EVERY = 512  # 2 steps of 256 tokens
TRAIN_TOKENS = 3072


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus prepared once (trainer, worker and evaluation read it)."""
    from tests.trainer.conftest import tiny_overrides
    from trainer.config import load_config
    from trainer.data import prepare_data

    path = tmp_path_factory.mktemp("cache")
    prepare_data(load_config(None, tiny_overrides(path)).data)
    return path


def _settings(tmp_path: Path, **fields: Any) -> Settings:
    return make_settings(
        store_url=str(tmp_path / "store"),
        state_dir=str(tmp_path / "state"),
        eval_config=TINY_EVAL,
        api_token=None,
        job_heartbeat_s=0.5,
        recovery_interval_s=1.0,
        **fields,
    )


class Trainer:
    """``wsm train`` on the tiny run as a subprocess in its own process group."""

    def __init__(self, tmp_path: Path, cache: Path, name: str) -> None:
        from tests.trainer.conftest import tiny_overrides

        overrides = tiny_overrides(
            cache,
            run=RUN,
            store=str(tmp_path / "store"),
            train_tokens=TRAIN_TOKENS,
            **{"checkpoint.save_every": SAVE_EVERY, "schedule.warmup": "256"},
        )
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "WSM_CACHE_DIR": str(cache)}
        env["WSM_TRAINER_TEST_UPLOAD_DELAY"] = "3"
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.log = tmp_path / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsm.cli", "train", *[a for o in overrides for a in ("--set", o)]],
            cwd=ROOT,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _worker(settings: Settings, tmp_path: Path, cache: Path, name: str) -> Worker:
    env = service_env(settings, job_stale_after_s=settings.job_stale_after_s)
    env["WSM_CACHE_DIR"] = str(cache)
    worker = Worker(env, tmp_path / f"{name}.log")
    wait_for(lambda: "ready" in worker.tail(100_000), 180, "the worker to start", worker.tail)
    return worker


def _policy_points(client: TestClient, policy_id: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = client.get(f"/policies/{policy_id}").json()["points"]
    return points


def _all_done(client: TestClient, policy_id: str, expected: int) -> list[dict[str, Any]] | None:
    points = [p for p in _policy_points(client, policy_id) if p["state"] != "skipped"]
    failed = [p for p in points if p["state"] == "failed"]
    assert not failed, failed
    return points if len(points) == expected and all(p["state"] == "done" for p in points) else None


def test_policy_fills_the_frontier_while_training(tmp_path: Path, cache: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.store_url, settings=settings)
    client = TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))
    worker = _worker(settings, tmp_path, cache, "worker")
    trainer = Trainer(tmp_path, cache, "trainer")
    try:
        wait_for(lambda: client.get("/runs").json()["runs"], 180, "the run", trainer.tail)
        body = {"run": RUN, "curve": "1-sqrt", "window": "1024", "every": "1024"}
        created = client.post("/policies", json=body)
        assert created.status_code == 201, created.text
        policy_id = created.json()["policy_id"]

        # The first point's anneal appears while the trainer is still at work.
        first = wait_for(lambda: jobs.list_jobs(store, RUN), 240, "the first policy job", worker.tail)
        assert trainer.proc.poll() is None, "the trainer finished before the policy acted"
        assert min(r.spec.window_end for r in first) == 1024
        assert trainer.wait(300) == 0, trainer.tail()

        points = wait_for(lambda: _all_done(client, policy_id, 3), 400, "every point evaluated", worker.tail)
        assert [p["window_end"] for p in points] == [1024, 2048, 3072]

        frontier = client.get(f"/runs/{RUN}/frontier").json()
        series = next(s for s in frontier["series"] if s["kind"] == "anneal")
        assert [p["tokens"] for p in series["points"]] == [1024, 2048, 3072]
        assert all(p["metrics"]["pretrain_val_loss"]["source"] == "eval" for p in series["points"])
        assert [p["tokens"] for p in frontier["wso"]] == [1024, 2048, 3072]  # evaluated beside each

        # The real decay of the last window (fork at 2048, decay over 1024) and its evaluation.
        from trainer.branch import decay_branch
        from trainer.evaluate import evaluate_model
        from wsm.eval_config import EvalConfig

        twin = decay_branch(RUN, fork=2048, window=1024, curve="1-sqrt", store=store).manifest
        assert twin is not None
        evaluate_model(store, RUN, twin.dir, EvalConfig.model_validate(TINY_EVAL))
        comparison = client.get(f"/runs/{RUN}/compare").json()
        assert len(comparison["rows"]) == 1
        row = comparison["rows"][0]
        assert row["window_end"] == 3072 and row["decay_models"] == [f"{RUN}:{twin.name}"]
        stats = row["metrics"]["pretrain_val_loss"]
        assert {stats[k]["source"] for k in ("wso", "merge", "decay")} == {"eval"}
        assert stats["gap_pct"] is not None and stats["recovered"] is not None
        assert stats["within_noise"] in (True, False) and stats["noise_from"] == "checkpoints"
        branch = client.get(f"/runs/{RUN}/branches").json()["branches"][0]
        assert branch["points"][0]["tokens"] == 2048 + 256 and branch["points"][-1]["tokens"] == 3072

        _check_in_browser(settings, store, tmp_path)
    finally:
        worker.stop()
        if trainer.proc.poll() is None:
            trainer.kill()


def _check_in_browser(settings: Settings, store: Store, tmp_path: Path) -> None:
    """The frontier and the pairing drawn by the dashboard from this real run."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = os.environ.get("WSM_CHROMIUM", "/usr/bin/chromium")
    if not shutil.which(chromium):
        pytest.skip(f"needs Debian's chromium at {chromium}")
    with _serve(settings, store) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/#run={RUN}")
            page.wait_for_selector("#pairs-table tbody tr")
            assert page.get_attribute("#chart-frontier", "data-variant-points") == "4"  # 3 anneals + the twin
            assert page.locator("#pairs-table tbody tr").count() == 1
            assert page.locator("#pairs-table tbody tr .badge").count() == 1
            artifacts = ROOT / "artifacts"
            artifacts.mkdir(exist_ok=True)
            page.set_viewport_size({"width": 1400, "height": 900})
            page.screenshot(path=str(artifacts / "policy-flow.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()


class _serve:
    """uvicorn on a free loopback port in a thread, for the browser."""

    def __init__(self, settings: Settings, store: Store) -> None:
        app = create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings))
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_restart_of_every_component_loses_and_duplicates_nothing(tmp_path: Path, cache: Path) -> None:
    settings = _settings(tmp_path, job_stale_after_s=8.0)
    store = Store(settings.store_url, settings=settings)
    api = TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))
    worker = _worker(settings, tmp_path, cache, "worker-1")
    trainer = Trainer(tmp_path, cache, "trainer-1")
    processes: list[Any] = [worker, trainer]
    try:
        wait_for(lambda: api.get("/runs").json()["runs"], 180, "the run", trainer.tail)
        body = {"run": RUN, "curve": "1-sqrt", "window": "1024", "every": "512"}
        policy_id = api.post("/policies", json=body).json()["policy_id"]
        # Mid-policy: a job exists and the trainer is still saving checkpoints. Kill everything.
        wait_for(lambda: jobs.list_jobs(store, RUN), 240, "a policy job", worker.tail)
        assert trainer.proc.poll() is None, "the trainer finished before the kill"
        trainer.kill()
        worker.kill()
        del api  # the API keeps nothing: a new one is built from the store
        time.sleep(2)

        trainer = Trainer(tmp_path, cache, "trainer-2")
        worker = _worker(settings, tmp_path, cache, "worker-2")
        processes = [worker, trainer]
        api = TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))
        assert trainer.wait(300) == 0, trainer.tail()
        assert "resum" in trainer.log.read_text().lower()
        points = wait_for(lambda: _all_done(api, policy_id, 5), 400, "every point evaluated", worker.tail)
        ends = [1024, 1536, 2048, 2560, 3072]
        assert [p["window_end"] for p in points] == ends
        skipped = [p for p in _policy_points(api, policy_id) if p["state"] == "skipped"]
        assert [p["window_end"] for p in skipped] == [512]  # the window does not fit there: said so

        # Exactly one job, one annealed model and two evaluations (merge + WSO) per point.
        records = jobs.list_jobs(store, RUN)
        assert sorted(r.spec.window_end for r in records) == ends
        assert {r.job_id for r in records} == {p["job_id"] for p in points}
        models = store.list_models(RUN, kind="anneal")
        assert sorted(m.tokens for m in models) == ends
        evals = store.list_evals(RUN)
        assert len(evals) == len({e.model_id for e in evals}) == 2 * len(ends)
    finally:
        for proc in processes:
            if isinstance(proc, Worker):
                proc.stop()
            elif proc.proc.poll() is None:
                proc.kill()
