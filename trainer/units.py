"""Token counts as sizes (``25B``, ``200k``, parsed by :mod:`theory`) and their conversion to steps."""

from __future__ import annotations

import math

from theory import format_tokens, parse_tokens

__all__ = ["format_tokens", "parse_tokens", "tokens_to_steps"]


def tokens_to_steps(tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps covering ``tokens`` (rounded up: a size is never undershot)."""
    return max(1, math.ceil(tokens / tokens_per_step))
