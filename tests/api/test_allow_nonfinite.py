"""``POST /anneal`` carries ``allow_nonfinite`` into the job it creates (another job than without it)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from anneal import jobs
from wsm.store import Store

BODY = {"curve": "1-sqrt", "window": "40M", "evaluate": False}


def test_allow_nonfinite_reaches_the_job_spec(client: TestClient, run_store: Store) -> None:
    plain = client.post("/anneal", json=BODY)
    allowed = client.post("/anneal", json={**BODY, "allow_nonfinite": True})
    assert plain.status_code == allowed.status_code == 202, allowed.text
    assert plain.json()["job_id"] != allowed.json()["job_id"]
    assert jobs.load(run_store, "r1", allowed.json()["job_id"]).spec.allow_nonfinite is True
    assert jobs.load(run_store, "r1", plain.json()["job_id"]).spec.allow_nonfinite is False
    assert client.post("/anneal", json={**BODY, "allow_nonfinite": "maybe"}).status_code == 422
