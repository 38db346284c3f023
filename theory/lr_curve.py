"""The effective learning-rate curve that a merge is equivalent to, for plotting.

Updates before the oldest chosen checkpoint are fully inside every merged checkpoint (factor 1);
the updates between checkpoints j−1 and j enter with factor w_j. So the merge equals a run whose
LR, relative to the constant peak, is this step function over the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from theory.curves import CURVE_FUNCTIONS, CurveSpec
from theory.errors import TheoryError
from theory.selection import Selection


@dataclass(frozen=True)
class LRCurve:
    """A right-open step function: ``factor[i]`` applies on ``[tokens[i], tokens[i + 1])``."""

    tokens: tuple[int, ...]
    """Segment edges in tokens: S, t_0, t_1, ..., t_k (one more than factors)."""

    factor: tuple[float, ...]
    """LR relative to the peak on each segment: 1 before t_0, then w_1..w_k."""

    def points(self) -> list[tuple[int, float]]:
        """(token, factor) pairs for a step chart: each factor at its segment start, plus the end."""
        return [*zip(self.tokens[:-1], self.factor, strict=True), (self.tokens[-1], self.factor[-1])]


def lr_steps(window_start: int, tokens: Sequence[int], w: Sequence[float]) -> LRCurve:
    """The step-function LR of a merge of checkpoints at ``tokens`` (oldest first) with decay
    coefficients ``w`` (w_1..w_k, one per checkpoint after the oldest) over a window from ``window_start``."""
    if len(w) != len(tokens) - 1:
        raise TheoryError(f"{len(w)} decay coefficients for {len(tokens)} checkpoints; need one fewer")
    return LRCurve(tokens=(window_start, *tokens), factor=(1.0, *(float(v) for v in w)))


def effective_lr_curve(selection: Selection) -> LRCurve:
    """The step-function LR (relative to peak) over the window that ``selection`` reproduces."""
    return lr_steps(selection.window_start, selection.tokens, [float(v) for v in selection.w])


def target_points(
    curve: CurveSpec, start: int, end: int, samples: int = 101
) -> list[tuple[int, float]] | None:
    """The continuous curve over [start, end] that a merge's steps approximate; None for ema and custom."""
    if curve.name not in CURVE_FUNCTIONS:
        return None
    x = np.linspace(0.0, 1.0, samples)
    values = curve.decay_at(x)
    tokens = start + x * (end - start)
    return [(round(float(t)), float(v)) for t, v in zip(tokens, values, strict=True)]


def target_lr_curve(selection: Selection, samples: int = 101) -> list[tuple[int, float]] | None:
    """The continuous curve the steps approximate, sampled over [S, E]; None for ema and custom."""
    return target_points(selection.curve, selection.window_start, selection.window_end, samples)
