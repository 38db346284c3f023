"""Which window to anneal first: a recent window over enough checkpoints, and only once the run is long enough.

The papers anneal over the last 10-20% of training. A window that covers most of a young run
gives its earliest checkpoints, taken while the model was still far from the stable phase, a large
weight, and the merge then looks worse than the plain WSO checkpoint. So the suggestion is the last
``share`` of the run (at least ``min_intervals`` checkpoint intervals, for a smooth decay), and it
is "ready" only when that window starts after warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from theory.errors import TheoryError
from theory.sizes import format_tokens_exact as format_tokens


@dataclass(frozen=True)
class WindowSuggestion:
    """A window to anneal, and whether the run is long enough for it yet."""

    window: int
    """Window width in tokens: a whole number of checkpoint intervals."""
    checkpoints: int
    """How many checkpoints it merges: one per interval (the window's start is not one of them)."""
    ready_at: int
    """Run length in tokens from which the window is the last ``share`` of the run and clears warm-up."""
    ready: bool
    """Whether the run (its newest checkpoint) has reached ``ready_at``."""
    reason: str
    """Why not yet (empty when ready)."""


def suggest_window(
    run_tokens: int,
    interval: int,
    *,
    warmup: int = 0,
    share: float = 0.2,
    min_intervals: int = 4,
) -> WindowSuggestion:
    """The window to anneal for a run ``run_tokens`` long saving a checkpoint every ``interval`` tokens."""
    if interval <= 0:
        raise TheoryError(f"checkpoint interval must be positive, got {interval}")
    if not 0.0 < share <= 1.0:
        raise TheoryError(f"share must be in (0, 1], got {share}")
    if min_intervals < 1 or run_tokens < 0 or warmup < 0:
        raise TheoryError("min_intervals must be >= 1 and token counts >= 0")
    intervals = max(min_intervals, math.floor(share * run_tokens / interval))
    window = intervals * interval
    # The window is at most `share` of the run, and starts after warm-up (rounded up to a checkpoint).
    ready_at = max(
        math.ceil(window / share / interval) * interval, math.ceil((warmup + window) / interval) * interval
    )
    ready = run_tokens >= ready_at
    reason = ""
    if not ready:
        reason = (
            f"the run is {format_tokens(run_tokens)} tokens; a {format_tokens(window)} window is the last "
            f"{share:.0%} of it (and past warm-up) from {format_tokens(ready_at)} tokens on; earlier, its "
            "oldest checkpoints weigh heavily and the merge can look worse than the WSO checkpoint"
        )
    return WindowSuggestion(window, intervals, ready_at, ready, reason)
