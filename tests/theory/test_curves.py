"""Decay curves: shapes, parameters, their discretisation, and the reference figures."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from theory import CURVE_NAMES, CurveSpec, TheoryError, weights_for_grid


def test_reference_figures_one_minus_sqrt_four_checkpoints() -> None:
    selection = weights_for_grid(CurveSpec("1-sqrt"), 4)
    np.testing.assert_allclose(selection.c, [0.5, 0.2071, 0.1589, 0.1340], atol=5e-5)


@pytest.mark.parametrize("name", ["linear", "cosine", "1-sqrt", "exponential"])
def test_curves_start_at_one_and_end_at_zero(name: str) -> None:
    values = CurveSpec(name).decay_at([0.0, 0.3, 0.7, 1.0])
    assert values[0] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(values) <= 0)


def test_aliases() -> None:
    assert CurveSpec("minus_sqrt").name == "1-sqrt"
    assert CurveSpec("Mean").name == "linear"


@given(st.integers(min_value=2, max_value=60))
def test_linear_is_the_uniform_mean(n: int) -> None:
    np.testing.assert_allclose(weights_for_grid(CurveSpec("linear"), n).c, np.full(n, 1.0 / n), atol=1e-12)


@given(st.integers(min_value=1, max_value=60))
def test_constant_is_the_newest_alone(n: int) -> None:
    c = weights_for_grid(CurveSpec("constant"), n).c
    expected = np.zeros(n)
    expected[-1] = 1.0
    np.testing.assert_allclose(c, expected)


@given(st.integers(min_value=2, max_value=50), st.floats(min_value=0.01, max_value=1.0))
def test_ema_matches_closed_form(n: int, alpha: float) -> None:
    c = weights_for_grid(CurveSpec("ema", alpha=alpha), n).c
    k = n - 1
    expected = np.array([(1 - alpha) ** k] + [alpha * (1 - alpha) ** (k - j) for j in range(1, k + 1)])
    np.testing.assert_allclose(c, expected, rtol=1e-9, atol=1e-12)


@given(
    st.sampled_from(["linear", "cosine", "1-sqrt", "exponential"]),
    st.integers(min_value=2, max_value=40),
    st.floats(min_value=0.0, max_value=0.9),
)
def test_floor_keeps_weights_valid_and_lifts_the_newest(name: str, n: int, floor: float) -> None:
    c = weights_for_grid(CurveSpec(name, floor=floor), n).c
    assert np.all(c >= 0) and c.sum() == pytest.approx(1.0)
    assert c[-1] >= floor - 1e-12, "the newest checkpoint carries at least the floor"


def test_custom_coefficients_are_used_as_w() -> None:
    selection = weights_for_grid(CurveSpec("custom", coefficients=(0.8, 0.4, 0.1)), 4)
    np.testing.assert_allclose(selection.w, [0.8, 0.4, 0.1])
    np.testing.assert_allclose(selection.c, [0.2, 0.4, 0.3, 0.1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "step"}, "unknown curve 'step'; choose one of: linear"),
        ({"name": "ema"}, "ema needs alpha"),
        ({"name": "ema", "alpha": 0.0}, "ema needs alpha"),
        ({"name": "ema", "alpha": 1.5}, "ema needs alpha"),
        ({"name": "linear", "alpha": 0.5}, "alpha applies only to the ema curve"),
        ({"name": "linear", "floor": 1.0}, r"floor = 1.0 must be in \[0, 1\)"),
        ({"name": "linear", "floor": -0.1}, r"floor = -0.1 must be in \[0, 1\)"),
        ({"name": "custom"}, "needs its decay coefficients"),
        ({"name": "custom", "coefficients": (0.2, 0.5)}, r"w\[1\] = 0.5 is larger than w\[0\] = 0.2"),
        ({"name": "custom", "coefficients": (1.5,)}, r"w\[0\] = 1.5 is outside"),
        ({"name": "linear", "coefficients": (0.5,)}, "coefficients apply only to the custom curve"),
    ],
)
def test_invalid_curves_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TheoryError, match=message):
        CurveSpec(**kwargs)  # type: ignore[arg-type]


def test_spec_round_trips_through_dict() -> None:
    for spec in (
        CurveSpec("ema", alpha=0.2),
        CurveSpec("custom", coefficients=(0.5, 0.1)),
        CurveSpec("cosine", floor=0.1),
    ):
        assert CurveSpec(**spec.to_dict()) == spec  # type: ignore[arg-type]


def test_every_listed_curve_is_constructible() -> None:
    for name in CURVE_NAMES:
        extra: dict[str, object] = {"alpha": 0.5} if name == "ema" else {}
        if name == "custom":
            extra = {"coefficients": (0.5,)}
        CurveSpec(name, **extra)  # type: ignore[arg-type]
