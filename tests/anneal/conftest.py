"""Fixtures of the anneal tests: settings with a fast heartbeat and a local store holding run ``r1``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.fixtures import make_run
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        store_url=str(tmp_path / "store"), state_dir=str(tmp_path / "state"), job_heartbeat_s=0.05
    )


@pytest.fixture()
def store(settings: Settings) -> Store:
    s = Store(settings.store_url, settings=settings)
    make_run(s)
    return s
