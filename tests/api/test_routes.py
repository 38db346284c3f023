"""Routes with the pipeline mocked at its boundary (the enqueuer): validation, idempotency, errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from anneal import jobs, runner
from api.app import create_app
from tests.api.conftest import FakeEnqueuer, published
from tests.api.fixtures import M
from wsm.commands.serve import bind_host
from wsm.settings import Settings
from wsm.store import Store

BODY = {"curve": "1-sqrt", "window": "40M"}


def test_post_anneal_enqueues_once_and_reports_the_selection(
    client: TestClient, enqueuer: FakeEnqueuer, run_store: Store
) -> None:
    r = client.post("/anneal", json=BODY)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["created"] is True and job["state"] == "queued" and job["run"] == "r1"
    sel = job["selection"]
    assert [c["tokens"] for c in sel["checkpoints"]] == [70 * M, 80 * M, 90 * M, 100 * M]
    assert sel["window"] == 40 * M and sel["window_end"] == 100 * M
    assert sum(c["c"] for c in sel["checkpoints"]) == pytest.approx(1.0)
    assert job["status_url"].endswith(f"/anneal/{job['job_id']}")
    assert published(client, enqueuer) == [("r1", job["job_id"])]
    assert [p.job_id for p in run_store.list_pins("r1")] == [job["job_id"]]
    again = client.post("/anneal", json={**BODY, "curve": "minus_sqrt"})
    assert (
        again.status_code == 202
        and again.json()["job_id"] == job["job_id"]
        and again.json()["created"] is False
    )
    assert len(published(client, enqueuer)) == 1
    status = client.get(f"/anneal/{job['job_id']}").json()
    assert status["stage"] == "queued" and status["model_id"] is None
    listed = client.get("/anneal", params={"run": "r1"}).json()["jobs"]
    assert [j["job_id"] for j in listed] == [job["job_id"]]


def test_concurrent_duplicates_create_one_job(client: TestClient, enqueuer: FakeEnqueuer) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/anneal", json=BODY), range(16)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert sum(a.json()["created"] for a in answers) == 1
    assert len(published(client, enqueuer)) == 1


def test_finished_job_returns_at_once_with_model(
    client: TestClient, run_store: Store, api_settings: Settings, enqueuer: FakeEnqueuer
) -> None:
    job_id = client.post("/anneal", json={**BODY, "evaluate": False}).json()["job_id"]
    dispatch = runner.Dispatch(evaluate=lambda r, j: None, split=lambda *a: None)
    assert runner.anneal(run_store, api_settings, "sqla+sqlite:///x", "r1", job_id, dispatch) == "done"
    r = client.post("/anneal", json={**BODY, "evaluate": False})
    assert r.status_code == 200 and r.json()["state"] == "done" and len(published(client, enqueuer)) == 1
    model_id = r.json()["model_id"]
    assert model_id.startswith("r1:anneal-1-sqrt-w40M-at-100M-n4-")
    model = client.get(f"/models/{model_id}").json()
    assert model["kind"] == "anneal" and [s["tokens"] for s in model["sources"]] == [
        70 * M,
        80 * M,
        90 * M,
        100 * M,
    ]
    weights = client.get(model["weights_url"])
    manifest = run_store.get_model("r1", model_id.split(":", 1)[1])
    assert weights.status_code == 200 and weights.content == run_store.read_file(
        manifest, "model.safetensors"
    )
    assert weights.headers["x-checksum-sha256"] == manifest.file("model.safetensors").sha256
    assert client.get("/runs/r1/models").json()["models"][0]["id"] == model_id


@pytest.mark.parametrize(
    ("body", "status", "error", "needle"),
    [
        ({"curve": "bogus", "window": "40M"}, 422, "unknown_curve", "choose one of"),
        ({"curve": "1-sqrt", "window": "40 parsecs"}, 422, "invalid_window", "not a token count"),
        ({"curve": "1-sqrt", "window": "4T"}, 422, "invalid_window", "longer than the run so far"),
        ({"curve": [0.25, 0.5], "window": "30M"}, 422, "invalid_curve", "non-increasing"),
        ({"curve": "1-sqrt", "window": "40M", "run": "nope"}, 404, "unknown_run", "runs in the store: r1"),
        ({"curve": "1-sqrt", "window": "40M", "run": "../etc"}, 400, "invalid_name", "run name"),
        ({"curve": "linear", "window": "40M", "alpha": 0.5}, 422, "invalid_curve", "ema"),
        ({"curve": "1-sqrt"}, 422, "invalid_request", "window: Field required"),
        ({"curve": "1-sqrt", "window": "40M", "color": "red"}, 422, "invalid_request", "color"),
        ({"curve": "1-sqrt", "window": "40M", "interval": "25M"}, 422, "invalid_window", "at least 2"),
    ],
)
def test_bad_requests_are_typed_4xx(
    client: TestClient, enqueuer: FakeEnqueuer, body: dict[str, Any], status: int, error: str, needle: str
) -> None:
    r = client.post("/anneal", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and needle in r.json()["detail"], r.json()
    assert published(client, enqueuer) == []


def test_unknown_run_lists_choices(client: TestClient) -> None:
    r = client.get("/runs/nope")
    assert r.status_code == 404 and r.json()["choices"] == ["r1"]


def test_broker_down_is_503_and_leaves_no_job(
    client: TestClient, enqueuer: FakeEnqueuer, run_store: Store
) -> None:
    enqueuer.down = True
    r = client.post("/anneal", json=BODY)
    assert (
        r.status_code == 503 and r.json()["error"] == "broker_unavailable" and "broker" in r.json()["detail"]
    )
    assert jobs.list_jobs(run_store, "r1") == [] and run_store.list_pins("r1") == []
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["store"]["ok"] is True and health.json()["broker"]["ok"] is False
    enqueuer.down = False
    assert client.post("/anneal", json=BODY).status_code == 202


def test_body_size_is_limited(client: TestClient) -> None:
    r = client.post("/anneal", json={"curve": [1.0] * 20000, "window": "40M"})
    assert r.status_code == 413 and r.json()["error"] == "request_too_large"


def test_token_guards_mutations_only(
    api_settings: Settings, run_store: Store, enqueuer: FakeEnqueuer
) -> None:
    app = create_app(
        api_settings.model_copy(update={"api_token": "s3cret"}), store=run_store, enqueuer=enqueuer
    )
    client = TestClient(app)
    assert client.post("/anneal", json=BODY).status_code == 401
    wrong = client.post("/anneal", json=BODY, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    assert client.post("/anneal", json=BODY, headers={"Authorization": "Bearer s3cret"}).status_code == 202
    assert client.get("/runs").status_code == 200


def test_without_token_serve_binds_loopback() -> None:
    assert bind_host("0.0.0.0", None) == "127.0.0.1"
    assert bind_host("0.0.0.0", "tok") == "0.0.0.0"


def test_read_endpoints(client: TestClient, run_store: Store) -> None:
    runs = client.get("/runs").json()["runs"]
    assert runs == [{**runs[0], "run": "r1", "checkpoints": 10, "latest_tokens": 100 * M}]
    detail = client.get("/runs/r1", params={"metrics_limit": 3}).json()
    assert (
        detail["schedule"] == {"style": "constant"}
        and len(detail["metrics"]) == 3
        and detail["metrics_truncated"]
    )
    ckpts = client.get("/runs/r1/checkpoints").json()["checkpoints"]
    assert [c["tokens"] for c in ckpts][:2] == [10 * M, 20 * M] and ckpts[0]["sha256"]
    assert client.get("/runs/r1/evals").json() == {"evals": []}
    assert client.get("/anneal/job-doesnotexist").json()["error"] == "unknown_job"
    assert client.get("/models/no-colon").status_code == 400
    assert client.get("/models/r1:missing").status_code == 404
    assert client.get("/healthz").json()["status"] == "ok"


def test_openapi_fields_are_typed_and_described(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    undescribed = []
    for name, model in schema["components"]["schemas"].items():
        if name in ("HTTPValidationError", "ValidationError"):
            continue
        for field, prop in model.get("properties", {}).items():
            if "description" not in prop or not (
                {"type", "anyOf", "$ref", "allOf", "enum", "const"} & set(prop)
            ):
                undescribed.append(f"{name}.{field}")
    assert undescribed == []
    assert {
        "/anneal",
        "/anneal/{job_id}",
        "/runs",
        "/runs/{run}",
        "/runs/{run}/checkpoints",
        "/runs/{run}/models",
        "/runs/{run}/evals",
        "/models/{model_id}",
        "/models/{model_id}/weights",
        "/healthz",
    } <= set(schema["paths"])
