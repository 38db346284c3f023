"""Names in the store: validation of run/artifact names and the zero-padded token-count helper.

Every component of every store path comes from here, so a request can never name a path outside
the store (no ``..``, no slashes, no hidden names) and token counts sort lexically as numbers.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)

PATH_PART_PATTERN = r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,127}$"
"""A component of a store path or of a file inside an artifact: may start with ``.`` or ``_``,
because checkpoint formats fix such file names (PyTorch DCP's ``.metadata``, ``__0_0.distcp``)."""
_PATH_PART_RE = re.compile(PATH_PART_PATTERN)
_RESERVED_PREFIXES = (".tmp-", ".trash-")  # staging and trash entries (wsm.store.backend)

TOKEN_WIDTH = 18
"""Digits of a checkpoint name; 10**18 tokens is far beyond any pre-training run."""

_TOKENS_RE = re.compile(rf"^[0-9]{{{TOKEN_WIDTH}}}$")


class InvalidNameError(ValueError):
    """A run, artifact, job or file name (or a store path) that is not allowed."""

    def __init__(self, what: str, value: object, reason: str = f"must match {NAME_PATTERN}") -> None:
        self.what = what
        self.value = value
        super().__init__(f"invalid {what} {value!r}: {reason}")


def validate_name(value: object, what: str = "name") -> str:
    """Return ``value`` if it is a safe single path component, else raise :class:`InvalidNameError`.

    Leading dots are refused on purpose: hidden names are reserved for staging/trash entries,
    which listings skip.
    """
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or ".." in value:
        raise InvalidNameError(what, value)
    return value


OUTSIDE_MODEL_PREFIX = "hf:"
"""Model id of a model outside the store that was evaluated in a run's context: ``hf:<absolute path>``
of a Hugging Face directory (``wsm evaluate ./merged``). The only model id that is not a store path."""


def validate_model_id(value: object) -> str:
    """A store-relative model dir, or :data:`OUTSIDE_MODEL_PREFIX` and an absolute path on one line."""
    if isinstance(value, str) and value.startswith(OUTSIDE_MODEL_PREFIX):
        path = value[len(OUTSIDE_MODEL_PREFIX) :]
        if not path.startswith("/") or not path.isprintable() or "/../" in f"{path}/":
            raise InvalidNameError("model id", value, "must be hf: and an absolute, normalised path")
        return value
    return validate_relpath(value, "model id")


def validate_relpath(value: object, what: str = "store path") -> str:
    """Validate a store-relative path such as ``runs/r1/checkpoints/000…/iter_0000100/.metadata``.

    Components follow :data:`PATH_PART_PATTERN`; ``.``, ``..`` and staging/trash names are refused.
    """
    if not isinstance(value, str) or not value:
        raise InvalidNameError(what, value, "must be a non-empty relative path")
    for part in value.split("/"):
        if (
            not _PATH_PART_RE.fullmatch(part)
            or part == "."
            or ".." in part
            or part.startswith(_RESERVED_PREFIXES)
        ):
            raise InvalidNameError(what, value, f"component {part!r} must match {PATH_PART_PATTERN}")
    return value


def validate_tree_path(value: object, what: str = "file name") -> str:
    """A file inside an artifact that holds a directory tree (``iter_0000100/__0_0.distcp``).

    Only whole trees written by a format (``Publisher.put_tree``) use such names; single files
    keep the stricter :func:`validate_name`.
    """
    return validate_relpath(value, what)


def checkpoint_name(tokens: int) -> str:
    """The directory name of the checkpoint at ``tokens`` tokens: zero-padded to 18 digits."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens < 10**TOKEN_WIDTH:
        raise InvalidNameError("token count", tokens, f"must be an int in [0, 10**{TOKEN_WIDTH})")
    return f"{tokens:0{TOKEN_WIDTH}d}"


def parse_checkpoint_name(name: str) -> int:
    """Inverse of :func:`checkpoint_name`; refuses anything not exactly 18 digits."""
    if not isinstance(name, str) or not _TOKENS_RE.fullmatch(name):
        raise InvalidNameError("checkpoint name", name, f"must be exactly {TOKEN_WIDTH} digits")
    return int(name)


def is_checkpoint_name(name: str) -> bool:
    """Whether ``name`` is a well-formed checkpoint directory name (used to filter listings)."""
    return bool(_TOKENS_RE.fullmatch(name))
