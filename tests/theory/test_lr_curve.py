"""The effective LR curve of a merge, as plotted by the dashboard."""

import numpy as np
import pytest

from theory import CurveSpec, effective_lr_curve, select_checkpoints, target_lr_curve, weights_for_grid


def test_steps_follow_the_decay_coefficients() -> None:
    selection = weights_for_grid(CurveSpec("1-sqrt"), 4)
    curve = effective_lr_curve(selection)
    assert curve.tokens == (0, 1, 2, 3, 4)
    np.testing.assert_allclose(curve.factor, [1.0, 0.5, 1 - np.sqrt(0.5), 1 - np.sqrt(0.75)])
    points = curve.points()
    assert points[0] == (0, 1.0) and points[-1][0] == 4


def test_steps_sit_on_the_target_at_each_segment_start() -> None:
    selection = select_checkpoints([i * 100 for i in range(1, 21)], CurveSpec("cosine"), 1600, interval=200)
    target = dict(target_lr_curve(selection, samples=9) or [])
    for token, factor in effective_lr_curve(selection).points()[:-1]:
        assert target[token] == pytest.approx(factor)


def test_no_continuous_target_for_per_checkpoint_curves() -> None:
    assert target_lr_curve(weights_for_grid(CurveSpec("ema", alpha=0.3), 4)) is None
