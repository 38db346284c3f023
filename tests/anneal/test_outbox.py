"""The background publisher: order, retries while the broker is down, health, and what a crash leaves."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from anneal import jobs
from anneal.errors import BrokerUnavailable
from anneal.outbox import Publisher
from tests.api.conftest import FakeEnqueuer, published
from wsm.store import Store

BODY = {"curve": "1-sqrt", "window": "40M", "evaluate": False}


class FlakyEnqueuer(FakeEnqueuer):
    """Refuses the first ``failures`` publishes, then works; counts pings."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.pings = 0

    def enqueue(self, run: str, job_id: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise BrokerUnavailable("the job broker (fake://) is unavailable: connection reset")
        super().enqueue(run, job_id)

    def ping(self) -> str:
        self.pings += 1
        return super().ping()


def test_messages_go_out_in_order() -> None:
    enqueuer = FlakyEnqueuer()
    publisher = Publisher(lambda: enqueuer)
    for i in range(50):
        publisher.submit("r1", f"job{i}")
    assert publisher.flush(5) and publisher.backlog == 0
    assert enqueuer.sent == [("r1", f"job{i}") for i in range(50)]
    publisher.close()


def test_a_failed_publish_is_retried_and_marks_the_broker_down_meanwhile() -> None:
    enqueuer = FlakyEnqueuer(failures=3)
    publisher = Publisher(lambda: enqueuer, retry_s=0.05)
    publisher.submit("r1", "a")
    publisher.submit("r1", "b")
    assert publisher.flush(5)
    assert enqueuer.sent == [("r1", "a"), ("r1", "b")]  # nothing lost, order kept
    publisher.check()  # the successful publish cleared the broker's failure
    publisher.close()


def test_check_probes_only_when_the_broker_state_is_stale() -> None:
    enqueuer = FlakyEnqueuer()
    publisher = Publisher(lambda: enqueuer, check_s=60)
    publisher.check()
    publisher.check()
    assert enqueuer.pings == 1  # the second check used the fresh answer
    enqueuer.down = True
    publisher.check()  # still fresh: not probed again
    stale = Publisher(lambda: enqueuer, check_s=0, retry_s=60)
    with pytest.raises(BrokerUnavailable, match="connection refused"):
        stale.check()
    enqueuer.down = False
    with pytest.raises(BrokerUnavailable):  # known down: answered from memory until retry_s passes
        stale.check()
    assert enqueuer.pings == 2


def test_close_leaves_unpublished_jobs_to_the_recovery_sweep(caplog: pytest.LogCaptureFixture) -> None:
    enqueuer = FlakyEnqueuer(failures=10**6)
    publisher = Publisher(lambda: enqueuer, retry_s=0.01)
    publisher.submit("r1", "stuck")
    start = time.monotonic()
    publisher.close(timeout=0.2)
    assert time.monotonic() - start < 3
    assert "not yet sent to the broker (stuck)" in caplog.text and "recovery sweep" in caplog.text
    enqueuer.failures = 0
    publisher.submit("r1", "later")  # a closed publisher starts again on demand, in order
    assert publisher.flush(5) and enqueuer.sent == [("r1", "stuck"), ("r1", "later")]
    publisher.close()


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


def test_a_health_probe_updates_what_requests_see() -> None:
    """``/healthz`` probes through the publisher: one notion of broker health, not two."""
    enqueuer = FlakyEnqueuer()
    enqueuer.down = True
    publisher = Publisher(lambda: enqueuer, check_s=60, retry_s=60)
    with pytest.raises(BrokerUnavailable):
        publisher.probe()
    with pytest.raises(BrokerUnavailable):
        publisher.check()  # answered from the probe's result, no second ping
    assert enqueuer.pings == 1
    enqueuer.down = False
    assert publisher.probe() == "fake broker answered"
    publisher.check()
    assert enqueuer.pings == 2
