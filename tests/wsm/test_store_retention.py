"""Retention keeps every checkpoint a merge window could need and everything pinned by a job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsm.settings import Settings
from wsm.store import RetentionPolicy, Store, layout, select_deletions


@given(
    st.lists(st.integers(0, 10_000), max_size=40),
    st.integers(0, 5_000),
    st.one_of(st.none(), st.integers(1, 3_000)),
    st.lists(st.integers(0, 10_000), max_size=5),
)
def test_selection_properties(
    tokens: list[int], window: int, interval: int | None, pinned: list[int]
) -> None:
    policy = RetentionPolicy(window, interval)
    doomed = select_deletions(tokens, policy, pinned)
    kept = sorted(set(tokens) - set(doomed))
    assert set(doomed) <= set(tokens) and not set(doomed) & set(pinned)
    if tokens:
        newest = max(tokens)
        # Any window [start, newest] with newest - start <= window has its first checkpoint at or
        # before `start` still available, and everything inside it.
        assert all(t in kept for t in tokens if t >= newest - window)
        before = [t for t in tokens if t < newest - window]
        if before:
            assert max(before) in kept
        if interval:
            buckets = {t // interval for t in before}
            assert buckets <= {t // interval for t in kept}


def test_selection_example() -> None:
    tokens = list(range(0, 101, 10))  # 0, 10, ..., 100
    assert select_deletions(tokens, RetentionPolicy(30)) == [0, 10, 20, 30, 40, 50]
    assert select_deletions(tokens, RetentionPolicy(30, sparse_interval_tokens=25)) == [10, 20, 40]
    assert select_deletions(tokens, RetentionPolicy(30), pinned=[10]) == [0, 20, 30, 40, 50]
    with pytest.raises(ValueError):
        RetentionPolicy(-1)
    with pytest.raises(ValueError):
        RetentionPolicy(10, 0)


def _fill(store: Store, tokens: list[int]) -> None:
    for t in tokens:
        with store.publish_checkpoint("r1", t) as pub:
            pub.write_bytes(layout.MODEL_FILE, b"w")


def test_apply_retention_honours_pins(store: Store) -> None:
    _fill(store, list(range(0, 101, 10)))
    policy = RetentionPolicy(30)
    store.pin("r1", "job-a", [0, 10])
    store.pin("r1", "job-b", [40], ttl=timedelta(hours=1))
    store.pin("r1", "job-old", [50], ttl=timedelta(seconds=-1))  # expired: protects nothing
    assert [p.job_id for p in store.list_pins("r1")] == ["job-a", "job-b", "job-old"]
    assert store.pinned_tokens("r1") == {0, 10, 40}
    assert store.apply_retention("r1", policy, dry_run=True) == [20, 30, 50]
    assert len(store.list_checkpoints("r1")) == 11
    assert store.apply_retention("r1", policy) == [20, 30, 50]
    assert [c.tokens for c in store.list_checkpoints("r1")] == [0, 10, 40, 60, 70, 80, 90, 100]
    assert not store.exists(f"{layout.checkpoint_dir('r1', 20)}/{layout.MODEL_FILE}")
    store.unpin("r1", "job-a")
    store.unpin("r1", "job-a")  # finishing twice is harmless
    assert store.apply_retention("r1", policy) == [0, 10]
    assert [c.tokens for c in store.list_checkpoints("r1")] == [40, 60, 70, 80, 90, 100]


def test_retention_is_opt_in_via_settings(local_store: Store) -> None:
    _fill(local_store, [1, 2, 3])
    assert local_store.apply_retention("r1") == []  # no policy configured
    settings = Settings(_env_file=None, retention_max_window_tokens=0)  # type: ignore[call-arg]
    on = Store(local_store.url, settings=settings)
    assert on.apply_retention("r1") == [1]  # keeps the newest and the one before it
