"""A window that reaches into warm-up, or covers most of the run, is flagged before anyone trusts it."""

from __future__ import annotations

from pathlib import Path

from anneal import resolve
from merger import store_io
from tests.api.fixtures import M, write_checkpoint
from theory import CurveSpec
from wsm.store import Store


def _run(tmp_path: Path, warmup_steps: int | None) -> Store:
    store = Store(str(tmp_path / "store"))
    schedule = {"style": "wso"} | ({"warmup_steps": warmup_steps} if warmup_steps is not None else {})
    store.create_run("r1", model={"hidden": 64}, data={"tokens_per_step": M}, schedule=schedule)
    for t in range(10 * M, 110 * M, 10 * M):
        write_checkpoint(store, "r1", t)
    return store


def _warnings(store: Store, window: str) -> list[str]:
    sel = store_io.select(store, "r1", CurveSpec("1-sqrt"), window)
    return resolve.window_warnings(store.get_run("r1"), sel)


def test_a_recent_window_after_warmup_is_fine(tmp_path: Path) -> None:
    assert _warnings(_run(tmp_path, warmup_steps=5), "20M") == []


def test_a_window_over_most_of_the_run_is_flagged(tmp_path: Path) -> None:
    (warning,) = _warnings(_run(tmp_path, warmup_steps=None), "80M")
    assert "covers 80% of the run so far" in warning and "last 10-20%" in warning


def test_a_window_into_warmup_is_flagged(tmp_path: Path) -> None:
    warnings = _warnings(_run(tmp_path, warmup_steps=30), "80M")
    assert any("inside warm-up (until 30M)" in w for w in warnings)
