"""The background publisher: order, retries while the broker is down, health, and what a crash leaves."""

from __future__ import annotations

import time

import pytest

from anneal.errors import BrokerUnavailable
from anneal.outbox import Publisher
from tests.api.conftest import FakeEnqueuer

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
