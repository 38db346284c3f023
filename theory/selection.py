"""Choosing the checkpoints of a window and weighting them.

A request names a window width W, optionally a checkpoint interval I (or a count N) and an end E
(default: the newest checkpoint). The window is [S, E] with S = E − W. Checkpoint t_j, oldest
first, is weighted through the decay coefficient of the segment that starts at it:
w_j = f((t_{j−1} − S) / W). With N checkpoints evenly spaced by I and W = N·I this is w_j = f(j/N),
the convention of Megatron-LM's weighted checkpoint merge; irregular spacing (after a resume or a
changed save interval) uses the real positions, so the merge still matches the curve.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from theory.curves import CurveSpec
from theory.errors import TheoryError
from theory.sizes import format_tokens, parse_tokens
from theory.theorem import FloatArray, merge_weights_from_decay

# A requested grid position matches a checkpoint within this fraction of the spacing: real runs
# save on step boundaries, so "every 200k tokens" lands on 200,704 with 2,048-token steps.
SNAP_FRACTION = 0.05


@dataclass(frozen=True)
class Selection:
    """The checkpoints chosen for a merge, their weights, and the window they really cover."""

    tokens: tuple[int, ...]
    """Token counts of the chosen checkpoints, oldest first."""

    c: FloatArray
    """Merge weight of each chosen checkpoint (same order); non-negative, sums to 1."""

    w: FloatArray
    """Decay coefficients w_1..w_k of the segments between consecutive checkpoints."""

    curve: CurveSpec
    """The decay curve the weights were derived from."""

    window_start: int
    """S: where the (effective) window starts, in tokens."""

    window_end: int
    """E: the newest chosen checkpoint, in tokens."""

    requested_window: int
    """The window W that was asked for."""

    @property
    def window(self) -> int:
        """The window actually covered, E − S."""
        return self.window_end - self.window_start

    @property
    def exact(self) -> bool:
        """Whether the covered window is the requested one."""
        return self.window == self.requested_window

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, as the CLI and the API report it."""
        return {
            "curve": self.curve.to_dict(),
            "curve_label": self.curve.label(),
            "window": self.window,
            "requested_window": self.requested_window,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "exact": self.exact,
            "checkpoints": [
                {"tokens": t, "c": float(c), "w": float(self.w[i - 1]) if i > 0 else None}
                for i, (t, c) in enumerate(zip(self.tokens, self.c, strict=True))
            ],
        }


def _sorted_checkpoints(available: Iterable[int]) -> list[int]:
    values = sorted(set(int(t) for t in available))
    if not values:
        raise TheoryError("the run has no checkpoints yet")
    if values[0] < 0:
        raise TheoryError(f"checkpoint token counts must be non-negative, got {values[0]}")
    return values


def _nearest(values: list[int], target: int) -> int:
    """The value of sorted ``values`` closest to ``target`` (the lower one on a tie)."""
    i = bisect.bisect_left(values, target)
    candidates = values[max(i - 1, 0) : i + 1]
    return min(candidates, key=lambda v: abs(v - target))


def _snap(values: list[int], target: int, tolerance: float, what: str) -> int:
    nearest = _nearest(values, target)
    if abs(nearest - target) > tolerance:
        raise TheoryError(
            f"no checkpoint at {format_tokens(target)} tokens for the {what} "
            f"(nearest is {format_tokens(nearest)}); the checkpoints are too sparse for this request"
        )
    return nearest


def _gaps(values: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(values)]


def _typical_spacing(values: list[int]) -> float:
    # Plain Python: runs have tens to thousands of checkpoints, where numpy's per-call overhead
    # dominates, and this sits on the API's request path.
    return float(statistics.median(_gaps(values))) if len(values) > 1 else 0.0


def select_checkpoints(
    available: Iterable[int],
    curve: CurveSpec,
    window: int | str,
    *,
    interval: int | str | None = None,
    count: int | None = None,
    end: int | str | None = None,
) -> Selection:
    """Pick the checkpoints for a merge over ``window`` ending at ``end`` and weight them by ``curve``.

    With ``interval`` (or ``count``, meaning interval = window / count) the checkpoints lie on
    that grid; otherwise every available checkpoint inside the window is used.
    """
    values = _sorted_checkpoints(available)
    width = parse_tokens(window, name="window")
    if interval is not None and count is not None:
        raise TheoryError("give either an interval or a checkpoint count, not both")
    fixed = curve.fixed_checkpoint_count
    if count is None and interval is None and fixed is not None:
        count = fixed
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise TheoryError(f"checkpoint count must be a positive integer, got {count!r}")
        if count > width:
            raise TheoryError(f"checkpoint count {count} exceeds the window of {width} tokens")
        interval = width // count

    if end is None:
        window_end = values[-1]
    else:
        asked = parse_tokens(end, name="end")
        window_end = _snap(values, asked, SNAP_FRACTION * _typical_spacing(values), "window end")
    if width > window_end:
        raise TheoryError(
            f"the window of {format_tokens(width)} tokens is longer than the run so far: "
            f"it ends at {format_tokens(window_end)} tokens"
        )
    in_run = [t for t in values if t <= window_end]

    if interval is not None:
        step = parse_tokens(interval, name="interval")
        n = width // step
        if n < 1:
            raise TheoryError(
                f"the interval {format_tokens(step)} is larger than the window {format_tokens(width)}"
            )
        start = window_end - n * step
        targets = [window_end - (n - 1 - i) * step for i in range(n)]
        chosen = [_snap(in_run, t, SNAP_FRACTION * step, f"interval {format_tokens(step)}") for t in targets]
    else:
        start = window_end - width
        chosen = [t for t in in_run if t > start]
        inner = _typical_spacing(chosen)
        lead = chosen[0] - start
        if len(chosen) >= 2 and lead > max(_gaps(chosen)) * (1 + SNAP_FRACTION):
            raise TheoryError(
                f"the window starts at {format_tokens(start)} tokens but its oldest checkpoint is at "
                f"{format_tokens(chosen[0])}: the checkpoints are too sparse to cover it "
                f"(spacing about {format_tokens(int(inner))}); use a shorter window"
            )

    if len(set(chosen)) != len(chosen):
        raise TheoryError(
            "the checkpoints are too sparse for this interval: two grid points map to one checkpoint"
        )
    if len(chosen) < 2 and curve.name != "constant":
        raise TheoryError(
            f"the window holds only {len(chosen)} checkpoint; a decay needs at least 2 "
            "(use a longer window or a smaller interval)"
        )
    positions = np.asarray(chosen, dtype=np.float64)
    offsets = (positions[:-1] - start) / float(window_end - start)
    w = curve.decay_coefficients(offsets)
    c = merge_weights_from_decay(w)
    return Selection(
        tokens=tuple(chosen),
        c=c,
        w=w,
        curve=curve,
        window_start=start,
        window_end=window_end,
        requested_window=width,
    )


def weights_for_grid(curve: CurveSpec, count: int) -> Selection:
    """Weights for ``count`` evenly spaced checkpoints (unit spacing): the textbook w_j = f(j/N)."""
    return select_checkpoints(range(1, count + 1), curve, count, interval=1)
