"""Workers that can't be wedged: SIGKILL of any worker process never leaves jobs stuck (real processes).

* an *idle* pool child (it held the pool's shared read lock: before anneal/broker/pool.py its
  replacement blocked on it forever), with one and with two pool processes;
* a *busy* pool child, mid-merge: the pool replaces it and the job completes on the same worker
  once its lease expires;
* the worker's main process: its pool children die with it (Celery's parent-death signal), and the
  job completes after the restart a supervisor (here, the test) does.

Each case on the embedded broker, where the blocking pool used to wedge; the busy and idle cases on
Redis too (Celery's asynchronous pool).
"""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from anneal.broker.enqueue import CeleryEnqueuer
from api.app import create_app
from tests.api.fixtures import make_run
from tests.api.worker import Worker, alive, redis_server, service_env, wait_for
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store

pytestmark = pytest.mark.slow

BROKERS = ["embedded", pytest.param("redis", marks=pytest.mark.redis)]


def _settings(tmp_path: Path, broker_url: str | None, **kw: Any) -> Settings:
    return make_settings(
        store_url=str(tmp_path / "store"),
        state_dir=str(tmp_path / "state"),
        broker_url=broker_url,
        job_heartbeat_s=0.3,
        job_stale_after_s=3.0,
        recovery_interval_s=1.0,
        **kw,
    )


def _client(settings: Settings, store: Store) -> TestClient:
    return TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))


def _job(client: TestClient, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/anneal/{job_id}").json()
    return body


def _finish(
    client: TestClient, job_ids: list[str], worker: Worker, timeout: float = 150
) -> list[dict[str, Any]]:
    def ended() -> list[dict[str, Any]] | None:
        found = [_job(client, j) for j in job_ids]
        return found if all(j["state"] in ("done", "failed") for j in found) else None

    jobs = wait_for(ended, timeout, f"{len(job_ids)} job(s) to end", worker.tail)
    assert [j["state"] for j in jobs] == ["done"] * len(jobs), [(j["state"], j["error"]) for j in jobs]
    return jobs


def _submit(client: TestClient, *curves: str, window: str = "30M") -> list[str]:
    ids = []
    for curve in curves:
        r = client.post("/anneal", json={"curve": curve, "window": window, "evaluate": False})
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    return ids


def _hidden(store: Store) -> list[str]:
    """Hidden leftovers (staging, temporary files) anywhere in the run."""
    return [p.name for p in Path(store.root, "runs", "r1").rglob(".*")]


def _broker(stack: ExitStack, tmp_path: Path, broker: str) -> str | None:
    return stack.enter_context(redis_server(tmp_path)) if broker == "redis" else None


def _merging(client: TestClient, job_id: str, worker: Worker) -> None:
    """Wait until the job's merge has started and made progress (a kill then lands mid-merge)."""
    wait_for(
        lambda: (j := _job(client, job_id))["stage"] == "merging" and j["progress"] > 0,
        90,
        "the merge to start",
        worker.tail,
    )


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("concurrency", [1, 2])
def test_killing_idle_pool_children_never_wedges_the_worker(
    tmp_path: Path, broker: str, concurrency: int
) -> None:
    with ExitStack() as stack:
        settings = _settings(tmp_path, _broker(stack, tmp_path, broker))
        store = Store(settings.store_url, settings=settings)
        make_run(store)
        worker = Worker(
            service_env(settings), tmp_path / "worker.log", queues="merge", concurrency=concurrency
        )
        stack.callback(worker.stop)
        pool = worker.wait_ready()
        for pid in pool:  # every idle child, one of which holds the shared read lock
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not alive(pid), 30, f"pool child {pid} to die")  # noqa: B023

        def new_pool() -> list[int] | None:
            now = worker.children()
            return now if len(now) == concurrency and not set(now) & set(pool) else None

        replaced = wait_for(new_pool, 60, "the pool to replace its children", worker.tail)
        assert worker.proc.poll() is None and not set(replaced) & set(pool)
        client = _client(settings, store)
        _finish(client, _submit(client, "linear", "cosine", "1-sqrt"), worker)


@pytest.mark.parametrize("broker", BROKERS)
def test_killing_a_busy_pool_child_the_job_completes_on_the_same_worker(tmp_path: Path, broker: str) -> None:
    with ExitStack() as stack:
        settings = _settings(tmp_path, _broker(stack, tmp_path, broker), merge_throttle_s=0.3)
        store = Store(settings.store_url, settings=settings)
        make_run(store, elements=1 << 16)  # many chunks: the throttled merge takes a while
        worker = Worker(service_env(settings), tmp_path / "worker.log", queues="merge")
        stack.callback(worker.stop)
        (child,) = worker.wait_ready()
        client = _client(settings, store)
        (job_id,) = _submit(client, "1-sqrt", window="40M")
        _merging(client, job_id, worker)
        os.kill(child, signal.SIGKILL)
        assert store.list_models("r1") == []  # killed mid-merge: nothing visible
        (done,) = _finish(client, [job_id], worker)
        assert done["attempts"] == 2 and worker.proc.poll() is None
        assert [m.name for m in store.list_models("r1")] == [done["model_name"]]
        store.verify(store.list_models("r1")[0])
        assert _hidden(store) == []  # the killed child's staging went when its replacement started
        _finish(client, _submit(client, "linear"), worker)  # and the worker still takes new jobs


def test_killing_the_main_process_the_job_completes_after_the_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path, None, merge_throttle_s=0.3)
    store = Store(settings.store_url, settings=settings)
    make_run(store, elements=1 << 16)
    first = Worker(service_env(settings), tmp_path / "worker1.log", queues="merge", concurrency=2)
    try:
        pool = first.wait_ready()
        client = _client(settings, store)
        (job_id,) = _submit(client, "1-sqrt", window="40M")
        _merging(client, job_id, first)
        os.kill(first.pid, signal.SIGKILL)  # the main process only
        first.proc.wait(30)
        # The pool children follow their parent (parent-death signal): nothing is left running.
        wait_for(lambda: not any(alive(p) for p in pool), 30, "the orphaned pool children to die")
    finally:
        first.stop()
    assert store.list_models("r1") == []
    second = Worker(service_env(settings, merge_throttle_s=0), tmp_path / "worker2.log", queues="merge")
    try:
        (done,) = _finish(client, [job_id], second)
        assert done["attempts"] == 2 and _hidden(store) == []
        _finish(client, _submit(client, "linear"), second)
    finally:
        second.stop()
