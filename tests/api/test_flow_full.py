"""The whole service on a real tiny run: POST /anneal -> worker process merges and publishes ->
both evaluations (annealed model and WSO checkpoint, real ``evaluate_model`` with a tiny config)
are recorded -> GET /anneal/{id} shows them. Once on Redis, once on the embedded broker.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from anneal.broker.enqueue import CeleryEnqueuer
from api.app import create_app
from tests.api.conftest import TINY_EVAL
from tests.api.worker import Worker, redis_server, service_env, wait_for
from tests.conftest import make_settings
from wsm.store import Store

pytestmark = pytest.mark.slow


def _flow(tmp_path: Path, template: Path, broker_url: str | None) -> None:
    shutil.copytree(template, tmp_path / "store")
    settings = make_settings(
        store_url=str(tmp_path / "store"),
        state_dir=str(tmp_path / "state"),
        broker_url=broker_url,
        eval_config=TINY_EVAL,
        job_heartbeat_s=0.5,
    )
    store = Store(settings.store_url, settings=settings)
    worker = Worker(service_env(settings), tmp_path / "worker.log")
    try:
        client = TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))
        assert client.get("/healthz").json()["broker"]["ok"] is True
        r = client.post("/anneal", json={"curve": "1-sqrt", "window": "1024"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert [c["tokens"] for c in r.json()["selection"]["checkpoints"]] == [1024, 1536]

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/anneal/{job_id}").json()
            return job if job["state"] in ("done", "failed") else None

        job = wait_for(finished, 180, "the job to finish", worker.tail)
        assert job["state"] == "done", job.get("error")
        anneal, baseline = job["evaluations"]["anneal"], job["evaluations"]["baseline"]
        assert anneal["model_dir"] == f"runs/tiny/models/{job['model_name']}"
        assert baseline["model_dir"] == "runs/tiny/checkpoints/000000000000001536"
        assert anneal["metrics"]["pretrain_val_loss"] > 0 and baseline["metrics"]["pretrain_val_loss"] > 0
        assert anneal["config"] == baseline["config"]  # evaluated the same way
        assert {e["name"] for e in client.get("/runs/tiny/evals").json()["evals"]} == {
            anneal["name"],
            baseline["name"],
        }
        assert client.get(f"/models/{job['model_id']}").json()["kind"] == "anneal"
        again = client.post("/anneal", json={"curve": "1-sqrt", "window": "1024"})
        assert again.status_code == 200 and again.json()["job_id"] == job_id and not again.json()["created"]
    finally:
        worker.stop()


def test_full_flow_on_redis(tmp_path: Path, trained_store_template: Path) -> None:
    with redis_server(tmp_path) as url:
        _flow(tmp_path, trained_store_template, url)


def test_full_flow_on_embedded_broker(tmp_path: Path, trained_store_template: Path) -> None:
    _flow(tmp_path, trained_store_template, None)
