"""The merge engine's exceptions: all are ``ValueError``s, so the CLI reports them as one line."""

from __future__ import annotations


class MergeError(ValueError):
    """A merge cannot be planned or completed; the message names the bad input."""


class CorruptFileError(MergeError):
    """A file is not a valid safetensors file (bad header, impossible offsets, truncated data)."""


class CorruptInputError(CorruptFileError):
    """A store checkpoint's bytes differ from the checksums of its manifest (bit rot, a bad copy)."""


class NonFiniteError(MergeError):
    """An input or the merged output holds NaN or Inf, and the merge does not allow it."""


class MismatchError(MergeError):
    """Checkpoints disagree on tensor names, shapes, dtypes, or (for non-float tensors) values."""


class WeightError(MergeError):
    """The merge weights are not a valid convex combination."""


class SourcesChangedError(MergeError):
    """A checkpoint of a selection was deleted or replaced after the selection was made."""
