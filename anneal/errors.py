"""What can go wrong with an anneal request or job, in the use case's own terms (no HTTP here).

Each problem is its own class with a stable ``code`` (a machine-readable name the API and the CLI
show) and, for closed sets, the valid ``choices``. The API maps classes to status codes
(api/errors.py); the command line prints the message.
"""

from __future__ import annotations

from collections.abc import Sequence


class RequestError(ValueError):
    """A request that cannot be served; ``code`` names the problem, ``choices`` the valid values."""

    code = "invalid_request"

    def __init__(self, detail: str, *, choices: Sequence[str] | None = None) -> None:
        super().__init__(detail)
        self.choices = list(choices) if choices is not None else None


class UnknownRunError(RequestError, LookupError):
    """The run named in the request is not in the store."""

    code = "unknown_run"


class NoCheckpointsError(RequestError):
    """The run exists but has no published checkpoint yet."""

    code = "no_checkpoints"


class UnknownCurveError(RequestError):
    """The curve name is not in theory's registry."""

    code = "unknown_curve"


class InvalidCurveError(RequestError):
    """The curve's parameters (alpha, floor, coefficients) are invalid."""

    code = "invalid_curve"


class InvalidWindowError(RequestError):
    """The window, interval, count or end cannot be resolved against the run's checkpoints."""

    code = "invalid_window"


class BrokerUnavailable(Exception):
    """The broker did not accept the message (down, unreachable, or refusing)."""
