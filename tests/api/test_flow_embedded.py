"""End to end with real worker processes: POST /anneal -> worker -> model in the store (embedded broker).

Also: a worker SIGKILLed mid-merge (the merge is throttled by a test-only setting) -> the job
completes once a worker runs again, and no partial model is ever visible (embedded and Redis).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from anneal.broker.enqueue import CeleryEnqueuer
from api.app import create_app
from tests.api.fixtures import make_run
from tests.api.worker import Worker, redis_server, service_env, wait_for
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store

pytestmark = pytest.mark.slow


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        store_url=str(tmp_path / "store"),
        state_dir=str(tmp_path / "state"),
        broker_url=None,
        job_heartbeat_s=0.3,
        job_stale_after_s=3.0,
        recovery_interval_s=1.0,
    )
    base.update(kw)
    return make_settings(**base)


def _job(client: TestClient, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/anneal/{job_id}").json()
    return body


def test_anneal_on_embedded_broker_with_split_merge(tmp_path: Path) -> None:
    # Split threshold of 1 byte: the merge runs as a chord of 2 parts plus the publishing step.
    settings = _settings(tmp_path, merge_split_bytes=1, merge_parts=2)
    store = Store(settings.store_url, settings=settings)
    make_run(store)
    worker = Worker(service_env(settings), tmp_path / "worker.log", queues="merge", concurrency=2)
    try:
        client = TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))
        r = client.post("/anneal", json={"curve": "linear", "window": "30M", "evaluate": False})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        done = wait_for(
            lambda: (j := _job(client, job_id))["state"] in ("done", "failed") and j,
            120,
            "the job to finish",
            worker.tail,
        )
        assert done["state"] == "done", done
        model = client.get(f"/models/{done['model_id']}").json()
        assert len([f for f in model["files"] if f.endswith(".safetensors")]) == 2
        assert [s["tokens"] for s in model["sources"]] == [
            c["tokens"] for c in done["selection"]["checkpoints"]
        ]
    finally:
        worker.stop()


@pytest.mark.parametrize("broker", ["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def test_sigkilled_worker_job_completes_after_restart(tmp_path: Path, broker: str) -> None:
    with ExitStack() as stack:
        url = stack.enter_context(redis_server(tmp_path)) if broker == "redis" else None
        _kill_and_restart(tmp_path, _settings(tmp_path, merge_throttle_s=0.4, broker_url=url))


def _kill_and_restart(tmp_path: Path, settings: Settings) -> None:
    store = Store(settings.store_url, settings=settings)
    # Many small chunks so the throttled merge takes a few seconds: 4 tensors x 64k floats.
    make_run(store, elements=1 << 16)
    client = TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))
    env = service_env(settings)
    first = Worker(env, tmp_path / "worker1.log", queues="merge")
    try:
        job_id = client.post("/anneal", json={"curve": "1-sqrt", "window": "40M", "evaluate": False}).json()[
            "job_id"
        ]
        wait_for(
            lambda: (j := _job(client, job_id))["stage"] == "merging" and j["progress"] > 0,
            90,
            "the merge to start",
            first.tail,
        )
    finally:
        first.kill()
    assert store.list_models("r1") == []  # killed mid-merge: nothing visible
    assert _job(client, job_id)["state"] == "running"
    second = Worker(service_env(settings, merge_throttle_s=0), tmp_path / "worker2.log", queues="merge")
    try:
        done = wait_for(
            lambda: (j := _job(client, job_id))["state"] in ("done", "failed") and j,
            120,
            "the job to finish after the restart",
            second.tail,
        )
    finally:
        second.stop()
    assert done["state"] == "done" and done["attempts"] == 2, done
    models = store.list_models("r1")
    assert [m.name for m in models] == [done["model_name"]]
    store.verify(models[0])
    leftovers = [
        p.name for p in (Path(settings.store_url) / "runs/r1/models").iterdir() if p.name.startswith(".")
    ]
    assert leftovers == [] or all(name.startswith(".tmp-") for name in leftovers)
