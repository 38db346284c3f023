"""Theorem 3.1 both ways: properties of the bijection and every refusal."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from theory import TheoryError, decay_from_merge_weights, merge_weights_from_decay

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
decays = st.lists(unit, min_size=0, max_size=40).map(lambda v: sorted(v, reverse=True))
simplex = (
    arrays(np.float64, st.integers(1, 40), elements=st.floats(0.0, 1.0))
    .filter(lambda a: a.sum() > 1e-3)
    .map(lambda a: a / a.sum())
)


@given(decays)
def test_weights_are_a_convex_combination(w: list[float]) -> None:
    c = merge_weights_from_decay(w)
    assert c.shape == (len(w) + 1,)
    assert np.all(c >= 0)
    assert c.sum() == pytest.approx(1.0, abs=1e-12)


@given(decays)
def test_w_to_c_to_w_round_trips(w: list[float]) -> None:
    np.testing.assert_allclose(decay_from_merge_weights(merge_weights_from_decay(w)), w, atol=1e-12)


@given(simplex)
def test_c_to_w_to_c_round_trips(c: np.ndarray) -> None:
    w = decay_from_merge_weights(c)
    assert np.all(np.diff(w) <= 1e-12), "tail sums of non-negative weights never increase"
    np.testing.assert_allclose(merge_weights_from_decay(w), c, atol=1e-12)


def test_paper_formula_spelled_out() -> None:
    w = [0.9, 0.5, 0.2]
    np.testing.assert_allclose(merge_weights_from_decay(w), [0.1, 0.4, 0.3, 0.2])


def test_no_decay_is_the_newest_alone() -> None:
    np.testing.assert_allclose(merge_weights_from_decay([1.0, 1.0, 1.0]), [0, 0, 0, 1])
    np.testing.assert_allclose(merge_weights_from_decay([]), [1.0])


@pytest.mark.parametrize(
    ("w", "message"),
    [
        ([0.5, 0.7], r"w\[1\] = 0.7 is larger than w\[0\] = 0.5"),
        ([1.2, 0.5], r"w\[0\] = 1.2 is outside \[0, 1\]"),
        ([0.5, -0.1], r"w\[1\] = -0.1 is outside \[0, 1\]"),
        ([0.5, float("nan")], r"w\[1\] = nan is not a finite number"),
        ([[0.5]], "flat list"),
        (["a"], "not a list of numbers"),
    ],
)
def test_invalid_decay_refused(w: list[float], message: str) -> None:
    with pytest.raises(TheoryError, match=message):
        merge_weights_from_decay(w)


@pytest.mark.parametrize(
    ("c", "message"),
    [
        ([], "empty"),
        ([0.5, 0.6], "sum to 1.1"),
        ([1.5, -0.5], r"c\[1\] = -0.5 is negative"),
        ([0.5, float("inf")], r"c\[1\] = inf is not a finite number"),
    ],
)
def test_invalid_merge_weights_refused(c: list[float], message: str) -> None:
    with pytest.raises(TheoryError, match=message):
        decay_from_merge_weights(c)
