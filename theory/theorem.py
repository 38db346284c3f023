"""Theorem 3.1 of the WSM paper, in both directions.

A merge of checkpoints θ_0..θ_k (oldest first) with weights c_j equals θ_0 minus the updates
g_1..g_k (g_i moves θ_{i-1} to θ_i) scaled by w_i = Σ_{j≥i} c_j. So a non-increasing decay
sequence 1 ≥ w_1 ≥ … ≥ w_k ≥ 0 is reproduced exactly by

    c_k = w_k,   c_j = w_j − w_{j+1} (1 ≤ j < k),   c_0 = 1 − w_1,

and the map is a bijection between valid decay sequences and convex merge weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from theory.errors import TheoryError

FloatArray = NDArray[np.float64]

# Slack for values that are "in [0, 1]" or "sum to 1" up to float rounding of user input.
TOLERANCE = 1e-9


def _as_vector(values: Sequence[float] | FloatArray, what: str) -> FloatArray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TheoryError(f"{what}: not a list of numbers ({exc})") from None
    if array.ndim != 1:
        raise TheoryError(f"{what}: expected a flat list of numbers, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise TheoryError(f"{what}[{bad[0]}] = {array[bad[0]]} is not a finite number")
    return array


def validate_decay(w: Sequence[float] | FloatArray) -> FloatArray:
    """Check decay coefficients w_1..w_k: finite, in [0, 1], non-increasing. Empty means no decay."""
    array = _as_vector(w, "decay coefficients w")
    for index, value in enumerate(array):
        if value < -TOLERANCE or value > 1 + TOLERANCE:
            raise TheoryError(f"decay coefficients w[{index}] = {value} is outside [0, 1]")
    rises = np.flatnonzero(np.diff(array) > TOLERANCE)
    if rises.size:
        i = int(rises[0])
        raise TheoryError(
            f"decay coefficients must be non-increasing: w[{i + 1}] = {array[i + 1]} "
            f"is larger than w[{i}] = {array[i]}"
        )
    return np.clip(array, 0.0, 1.0)


def validate_merge_weights(c: Sequence[float] | FloatArray) -> FloatArray:
    """Check merge weights c_0..c_k: non-empty, finite, non-negative, summing to 1."""
    array = _as_vector(c, "merge weights c")
    if array.size == 0:
        raise TheoryError("merge weights c: empty; a merge needs at least one checkpoint")
    negative = np.flatnonzero(array < -TOLERANCE)
    if negative.size:
        i = int(negative[0])
        raise TheoryError(f"merge weights c[{i}] = {array[i]} is negative")
    total = float(array.sum())
    if abs(total - 1.0) > 1e-6:
        raise TheoryError(f"merge weights c sum to {total!r}, not 1")
    return np.clip(array, 0.0, None)


def merge_weights_from_decay(w: Sequence[float] | FloatArray) -> FloatArray:
    """Theorem 3.1: decay coefficients w_1..w_k → merge weights c_0..c_k (oldest first)."""
    decay = validate_decay(w)
    padded = np.concatenate(([1.0], decay, [0.0]))
    # Differences of a clipped non-increasing sequence are >= 0 up to rounding; clip that away.
    return np.clip(-np.diff(padded), 0.0, None)


def decay_from_merge_weights(c: Sequence[float] | FloatArray) -> FloatArray:
    """The converse: merge weights c_0..c_k → the decay coefficients w_i = Σ_{j≥i} c_j, i = 1..k."""
    weights = validate_merge_weights(c)
    tail_sums = np.cumsum(weights[::-1])[::-1]
    return np.asarray(tail_sums[1:], dtype=np.float64)
