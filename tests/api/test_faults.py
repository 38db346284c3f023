"""The fault suite, a few trials: random SIGKILLs of worker (pool children included), API, Redis and
trainer, and a store that fills up or turns read-only (tests/api/faults.py; ``bench/faults.py`` runs
many more and prints the counts).

Each trial checks that nothing partial or corrupt is visible, that no acknowledged job is lost and
that every failure is recorded with its reason.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.api.faults import Counts, run_trial
from tests.faultfs import can_mount

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trainer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.trainer.conftest import tiny_overrides
    from trainer.config import load_config
    from trainer.data import prepare_data

    cache = tmp_path_factory.mktemp("faults-cache")
    prepare_data(load_config(None, tiny_overrides(cache)).data)
    return cache


def _check(ran: str, counts: Counts) -> None:
    assert counts.violations() == {}, f"{counts.line(ran)}\n" + "\n".join(counts.notes)


@pytest.mark.parametrize(
    ("kind", "kills", "seed"),
    [("worker", 2, 11), pytest.param("redis", 1, 12, marks=pytest.mark.redis), ("api", 1, 13)],
)
def test_sigkill_trial(tmp_path: Path, kind: str, kills: int, seed: int) -> None:
    ran, counts = run_trial(kind, tmp_path / kind, random.Random(seed), kills=kills)
    _check(ran, counts)
    assert sum(counts.kills.values()) == kills and counts.acknowledged > 0
    assert counts.done + counts.failed >= counts.acknowledged


def test_trainer_sigkill_trial(tmp_path: Path, trainer_cache: Path) -> None:
    ran, counts = run_trial("trainer", tmp_path / "trainer", random.Random(14), trainer_cache, kills=1)
    _check(ran, counts)
    assert counts.kills["trainer"] == 1 and counts.checkpoints >= 3


@pytest.mark.parametrize("kind", ["full", "readonly"])
@pytest.mark.parametrize(
    "mount",
    [pytest.param(True, marks=pytest.mark.skipif(not can_mount(), reason="needs root to mount")), False],
)
def test_store_trial(tmp_path: Path, kind: str, mount: bool) -> None:
    ran, counts = run_trial(kind, tmp_path / kind, random.Random(15), mount=mount)
    _check(ran, counts)
    assert counts.acknowledged > 0
    if kind == "full":
        assert counts.failed > 0, "the store filled up: some job must have failed, with its reason"
    else:
        assert counts.refused > 0, "the read-only store refused new jobs"
