"""Typed errors of the store, so callers (API, merger, trainer) can react to each case."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store error except bad names (those are ``ValueError``s)."""


class ArtifactNotFoundError(StoreError, LookupError):
    """No complete (manifest-bearing) artifact or file at this path."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        super().__init__(f"not found in store: {path}" + (f" ({detail})" if detail else ""))


class ArtifactExistsError(StoreError, FileExistsError):
    """Publishing an artifact that is already published, without ``overwrite=True``."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"already published: {path} (pass overwrite=True to replace it)")


class IntegrityError(StoreError):
    """A stored file does not match its manifest (corrupt, truncated, or replaced).

    ``byte_range`` (start, end exclusive) names the block that failed when only part is bad.
    """

    def __init__(
        self, path: str, expected: str, actual: str, byte_range: tuple[int, int] | None = None
    ) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        self.byte_range = byte_range
        where = f"{path} at bytes {byte_range[0]}-{byte_range[1] - 1}" if byte_range else path
        super().__init__(f"integrity check failed for {where}: expected {expected}, got {actual}")


class ManifestError(StoreError):
    """A manifest that cannot be parsed or does not belong where it is stored."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"bad manifest {path}: {reason}")
