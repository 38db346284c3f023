"""Checkpoint selection: grids, irregular spacing, snapping, and every refusal."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from theory import CurveSpec, TheoryError, select_checkpoints

B = 10**9
EVERY_10B = [i * 10 * B for i in range(1, 13)]  # 10B .. 120B


def test_interval_grid_uses_the_megatron_convention() -> None:
    selection = select_checkpoints(EVERY_10B, CurveSpec("1-sqrt"), "80B", interval="10B")
    assert selection.tokens == tuple(i * 10 * B for i in range(5, 13))
    assert (selection.window_start, selection.window_end, selection.window) == (40 * B, 120 * B, 80 * B)
    assert selection.exact
    np.testing.assert_allclose(selection.w, 1 - np.sqrt(np.arange(1, 8) / 8))


def test_auto_selection_on_a_grid_equals_interval_selection() -> None:
    auto = select_checkpoints(EVERY_10B, CurveSpec("cosine"), "80B")
    grid = select_checkpoints(EVERY_10B, CurveSpec("cosine"), "80B", interval="10B")
    assert auto.tokens == grid.tokens
    np.testing.assert_allclose(auto.c, grid.c)


def test_count_means_window_over_count() -> None:
    selection = select_checkpoints(EVERY_10B, CurveSpec("linear"), "80B", count=4)
    assert selection.tokens == (60 * B, 80 * B, 100 * B, 120 * B)
    np.testing.assert_allclose(selection.c, 0.25)


def test_irregular_spacing_uses_real_positions() -> None:
    # A resume changed the save interval from 10B to 5B at 30B.
    tokens = [10 * B, 20 * B, 30 * B, 35 * B, 40 * B, 45 * B, 50 * B]
    selection = select_checkpoints(tokens, CurveSpec("linear"), "40B")
    assert selection.tokens == (20 * B, 30 * B, 35 * B, 40 * B, 45 * B, 50 * B)
    starts = np.array(selection.tokens[:-1], dtype=float)
    np.testing.assert_allclose(selection.w, 1 - (starts - 10 * B) / (40 * B))
    # Linear decay on uneven spacing is *not* a uniform mean: each c_j is proportional to the
    # length of the segment it closes (the oldest also carries everything before it).
    np.testing.assert_allclose(selection.c[1:-1], np.diff(selection.tokens[:-1]) / (40 * B))


@given(st.lists(st.integers(1, 50), min_size=3, max_size=30, unique=True))
def test_irregular_merge_reproduces_the_curve_on_every_segment(offsets: list[int]) -> None:
    tokens = sorted(100_000 + o * 1000 for o in offsets)
    end = tokens[-1]
    width = end - tokens[0] + min(np.diff(tokens))
    selection = select_checkpoints(tokens, CurveSpec("1-sqrt"), width)
    x = (np.array(selection.tokens[:-1]) - selection.window_start) / selection.window
    np.testing.assert_allclose(selection.w, 1 - np.sqrt(x))
    assert selection.c.sum() == pytest.approx(1.0)


def test_grid_snaps_to_step_boundaries() -> None:
    # save_every 200k with 2,048-token steps: checkpoints land on the first step past each multiple.
    step = 2048
    tokens = [-(-k * 200_000 // step) * step for k in range(1, 21)]
    selection = select_checkpoints(tokens, CurveSpec("1-sqrt"), "1.6M", interval="200k")
    assert len(selection.tokens) == 8
    assert selection.tokens[-1] == tokens[-1]
    assert set(selection.tokens) <= set(tokens)


def test_window_not_a_multiple_of_the_interval_reports_the_covered_window() -> None:
    selection = select_checkpoints(EVERY_10B, CurveSpec("linear"), "85B", interval="10B")
    assert selection.window == 80 * B and selection.requested_window == 85 * B
    assert not selection.exact
    assert selection.to_dict()["exact"] is False


def test_end_picks_an_older_anneal_point() -> None:
    selection = select_checkpoints(EVERY_10B, CurveSpec("linear"), "40B", interval="10B", end="80B")
    assert selection.tokens == (50 * B, 60 * B, 70 * B, 80 * B)


def test_custom_curve_dictates_the_count() -> None:
    selection = select_checkpoints(EVERY_10B, CurveSpec("custom", coefficients=(0.6, 0.2)), "60B")
    assert selection.tokens == (80 * B, 100 * B, 120 * B)
    np.testing.assert_allclose(selection.c, [0.4, 0.4, 0.2])


def test_constant_curve_selects_the_newest() -> None:
    selection = select_checkpoints(EVERY_10B, CurveSpec("constant"), "10B")
    assert selection.tokens == (120 * B,)
    np.testing.assert_allclose(selection.c, [1.0])


@pytest.mark.parametrize(
    ("available", "kwargs", "message"),
    [
        ([], {"window": "10B"}, "no checkpoints yet"),
        (EVERY_10B, {"window": "200B"}, "longer than the run so far: it ends at 120B"),
        (EVERY_10B, {"window": "80B", "end": "50B"}, "longer than the run so far: it ends at 50B"),
        (EVERY_10B, {"window": "80B", "interval": "5B"}, "no checkpoint at 45B .*too sparse"),
        (EVERY_10B, {"window": "80B", "interval": "100B"}, "larger than the window"),
        (EVERY_10B, {"window": "10B"}, "only 1 checkpoint; a decay needs at least 2"),
        (
            EVERY_10B,
            {"window": "80B", "interval": "10B", "count": 8},
            "either an interval or a checkpoint count",
        ),
        (EVERY_10B, {"window": "80B", "count": 0}, "positive integer"),
        (EVERY_10B, {"window": "80B", "end": "95B"}, "no checkpoint at 95B tokens for the window end"),
        ([60 * B, 70 * B, 80 * B], {"window": "80B"}, "too sparse to cover it"),
        (EVERY_10B, {"window": "8X"}, "window: '8X' has an unknown suffix"),
        ([-5, 10], {"window": "5"}, "non-negative"),
    ],
)
def test_refusals(available: list[int], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TheoryError, match=message):
        select_checkpoints(available, CurveSpec("1-sqrt"), **kwargs)  # type: ignore[arg-type]


def test_custom_curve_count_mismatch_refused() -> None:
    with pytest.raises(TheoryError, match="has 2 coefficients, so it needs 3 checkpoints, but 8"):
        select_checkpoints(EVERY_10B, CurveSpec("custom", coefficients=(0.6, 0.2)), "80B", interval="10B")
