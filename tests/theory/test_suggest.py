"""The suggested first window: recent, whole intervals, and ready only once the run is long enough."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from theory import TheoryError, suggest_window


def test_the_demo_numbers() -> None:
    young = suggest_window(491_520, 122_880, warmup=40_000)
    assert young.window == 491_520 and young.checkpoints == 4 and not young.ready
    assert young.ready_at == 2_457_600 and "last 20%" in young.reason
    grown = suggest_window(4_915_200, 122_880, warmup=40_000)
    assert grown.ready and grown.window == 983_040 and grown.reason == ""


@given(
    run=st.integers(0, 10**13),
    interval=st.integers(1, 10**11),
    warmup=st.integers(0, 10**12),
    share=st.floats(0.05, 1.0),
)
def test_properties(run: int, interval: int, warmup: int, share: float) -> None:
    s = suggest_window(run, interval, warmup=warmup, share=share)
    assert s.window % interval == 0 and s.window >= 4 * interval
    assert s.ready_at % interval == 0
    assert s.ready == (run >= s.ready_at)
    if s.ready:
        assert s.window <= share * run + interval  # recent: about `share` of the run
        assert run - s.window >= warmup - interval  # past warm-up, up to rounding to a checkpoint


def test_bad_input_is_named() -> None:
    with pytest.raises(TheoryError, match="interval must be positive"):
        suggest_window(100, 0)
