"""Checkpoint retention (opt-in): which checkpoints a run can drop without hurting any merge window.

Pure selection logic lives here so it can be property-tested; ``Store.apply_retention`` applies
it, re-checking pins right before each deletion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wsm.settings import Settings


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep all checkpoints within ``max_window_tokens`` of the newest, plus one before that
    boundary (a window may start between two checkpoints); of the older ones keep the first of
    every ``sparse_interval_tokens`` bucket, or none when it is unset."""

    max_window_tokens: int
    sparse_interval_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_window_tokens < 0:
            raise ValueError(f"max_window_tokens must be >= 0, got {self.max_window_tokens}")
        if self.sparse_interval_tokens is not None and self.sparse_interval_tokens <= 0:
            raise ValueError(f"sparse_interval_tokens must be > 0, got {self.sparse_interval_tokens}")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy | None:
        """The configured policy, or None when retention is off (the default)."""
        if settings.retention_max_window_tokens is None:
            return None
        return cls(settings.retention_max_window_tokens, settings.retention_sparse_interval_tokens)


def select_deletions(tokens: Iterable[int], policy: RetentionPolicy, pinned: Iterable[int] = ()) -> list[int]:
    """Token counts to delete, ascending. Never the newest, never a pinned one."""
    ordered = sorted(set(tokens))
    if not ordered:
        return []
    boundary = ordered[-1] - policy.max_window_tokens
    keep = {t for t in ordered if t >= boundary}
    older = [t for t in ordered if t < boundary]
    if older:
        keep.add(older[-1])  # the window's start may fall between it and the next one
    if policy.sparse_interval_tokens:
        seen: set[int] = set()
        for t in older:
            bucket = t // policy.sparse_interval_tokens
            if bucket not in seen:
                seen.add(bucket)
                keep.add(t)
    keep.update(pinned)
    return [t for t in ordered if t not in keep]
