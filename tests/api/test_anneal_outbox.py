"""POST /anneal through the outbox: a 202 means the record is durable, and the message follows."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from anneal import jobs
from anneal.errors import BrokerUnavailable
from tests.anneal.test_outbox import BODY
from tests.api.conftest import FakeEnqueuer, published
from wsm.store import Store


def test_acknowledged_job_is_durable_before_its_message_is_sent(
    client: TestClient, enqueuer: FakeEnqueuer, run_store: Store
) -> None:
    """A 202 means the record is in the store, even while the broker has not taken the message."""
    gate = threading.Event()
    real_enqueue = enqueuer.enqueue

    def slow_enqueue(run: str, job_id: str) -> None:
        gate.wait(10)
        real_enqueue(run, job_id)

    enqueuer.enqueue = slow_enqueue  # type: ignore[method-assign]
    r = client.post("/anneal", json=BODY)
    assert r.status_code == 202
    record = jobs.find(run_store, "r1", r.json()["job_id"])
    assert record is not None and record.state == "queued"
    assert [p.job_id for p in run_store.list_pins("r1")] == [record.job_id]
    assert enqueuer.sent == []
    gate.set()
    assert published(client, enqueuer) == [("r1", record.job_id)]


def test_broker_failing_after_acknowledgement_still_delivers(
    client: TestClient, enqueuer: FakeEnqueuer, run_store: Store
) -> None:
    """The broker dies between the 202 and the publish: the job waits, new jobs get 503, then it goes out."""
    client.app.state.publisher.retry_s = 0.05  # type: ignore[attr-defined]
    first = client.post("/anneal", json=BODY)
    assert first.status_code == 202
    client.app.state.publisher.flush(5)  # type: ignore[attr-defined]
    enqueuer.down = True
    accepted = client.post("/anneal", json={**BODY, "curve": "linear"})
    assert accepted.status_code == 202  # the broker answered recently: accepted, durably recorded
    publisher = client.app.state.publisher  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while True:  # the failed publish marks the broker down
        try:
            publisher.check()
        except BrokerUnavailable:
            break
        assert time.monotonic() < deadline, "a failed publish must mark the broker down"
        time.sleep(0.02)
    refused = client.post("/anneal", json={**BODY, "curve": "cosine"})
    assert refused.status_code == 503 and refused.json()["error"] == "broker_unavailable"
    assert jobs.find(run_store, "r1", accepted.json()["job_id"]) is not None
    enqueuer.down = False
    sent = published(client, enqueuer)
    assert [j for _, j in sent] == [first.json()["job_id"], accepted.json()["job_id"]]
