"""The math of wsm in pure numpy: decay curves, Theorem 3.1 both ways, sizes, windows, selection.

Nothing here knows about torch, storage, Celery or HTTP.
"""

from theory.curves import ALIASES, CURVE_NAMES, CurveInfo, CurveSpec, canonical_curve_name, curve_catalog
from theory.errors import TheoryError
from theory.lr_curve import LRCurve, effective_lr_curve, lr_steps, target_lr_curve, target_points
from theory.selection import Selection, select_checkpoints, weights_for_grid
from theory.sizes import format_tokens, format_tokens_exact, parse_tokens
from theory.suggest import WindowSuggestion, suggest_window
from theory.theorem import (
    decay_from_merge_weights,
    merge_weights_from_decay,
    validate_decay,
    validate_merge_weights,
)

__all__ = [
    "ALIASES",
    "CURVE_NAMES",
    "CurveInfo",
    "CurveSpec",
    "LRCurve",
    "Selection",
    "TheoryError",
    "WindowSuggestion",
    "canonical_curve_name",
    "curve_catalog",
    "decay_from_merge_weights",
    "effective_lr_curve",
    "format_tokens",
    "format_tokens_exact",
    "lr_steps",
    "merge_weights_from_decay",
    "parse_tokens",
    "select_checkpoints",
    "suggest_window",
    "target_lr_curve",
    "target_points",
    "validate_decay",
    "validate_merge_weights",
    "weights_for_grid",
]
