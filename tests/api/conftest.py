"""Fixtures of the API tests: a store with a synthetic run and an app whose enqueuer is a fake."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from anneal.errors import BrokerUnavailable
from api.app import create_app
from tests.api.fixtures import make_run
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store


class FakeEnqueuer:
    """Records what would have been sent to the broker; ``down`` simulates a dead broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.down = False
        self._lock = threading.Lock()

    def enqueue(self, run: str, job_id: str) -> None:
        if self.down:
            raise BrokerUnavailable("the job broker (fake://) is unavailable: connection refused")
        with self._lock:
            self.sent.append((run, job_id))

    def ping(self) -> str:
        if self.down:
            raise BrokerUnavailable("the job broker (fake://) is unavailable: connection refused")
        return "fake broker answered"


def published(client: TestClient, enqueuer: FakeEnqueuer) -> list[tuple[str, str]]:
    """What the app's background publisher has handed to ``enqueuer`` once it caught up."""
    assert client.app.state.publisher.flush(timeout=10), "the publisher did not catch up in 10 s"  # type: ignore[attr-defined]
    return enqueuer.sent


@pytest.fixture()
def api_settings(tmp_path: Path) -> Settings:
    # api_broker_retry_s=0: a broker that comes back is probed again at the next request.
    return make_settings(
        store_url=str(tmp_path / "store"),
        state_dir=str(tmp_path / "state"),
        api_token=None,
        api_broker_retry_s=0,
    )


@pytest.fixture()
def run_store(api_settings: Settings) -> Store:
    store = Store(api_settings.store_url, settings=api_settings)
    make_run(store)
    return store


@pytest.fixture()
def enqueuer() -> FakeEnqueuer:
    return FakeEnqueuer()


@pytest.fixture()
def client(api_settings: Settings, run_store: Store, enqueuer: FakeEnqueuer) -> TestClient:
    return TestClient(create_app(api_settings, store=run_store, enqueuer=enqueuer))


TINY_EVAL = {"sharpness": {"enabled": False}, "run_sft": False, "pretrain_valid_samples": 4, "device": "cpu"}
"""A tiny but real EvalConfig for integration tests: the held-out pre-training loss only (SFT takes minutes on CPU)."""


@pytest.fixture(scope="session")
def trained_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny WSO run made by the trainer (3 checkpoints, 512 tokens apart); copy it before use."""
    from tests.trainer.conftest import tiny_overrides
    from trainer.config import load_config
    from trainer.loop import Trainer

    root = tmp_path_factory.mktemp("trained")
    cfg = load_config(
        None,
        tiny_overrides(
            root / "cache",
            run="tiny",
            train_tokens=1536,
            **{"checkpoint.save_every": 512, "schedule.warmup": "256"},
        ),
    )
    Trainer(cfg, store=Store(str(root / "store"))).train()
    return root / "store"
