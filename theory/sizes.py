"""Token counts written the way people say them: ``80B``, ``1.5T``, ``25M``, ``300k``, ``12345``.

Suffixes are decimal (``B`` is 10**9 tokens, not GiB) and case-insensitive. Parsing is strict:
anything that is not a positive, finite count of at least one token is refused by name.
"""

from __future__ import annotations

import math
import numbers
import re

from theory.errors import TheoryError

_SUFFIXES: dict[str, int] = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}
_PATTERN = re.compile(
    r"^\s*([+-]?)\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e([+-]?[0-9]+))?\s*([a-z]?)\s*$", re.IGNORECASE
)
# Beyond this no training run is plausible; it also keeps the int conversion exact.
MAX_TOKENS = 10**18


def parse_tokens(value: str | int, *, name: str = "size", allow_zero: bool = False) -> int:
    """Parse a token count such as ``"80B"`` into an int; ``name`` labels the value in errors."""
    if isinstance(value, bool):
        raise TheoryError(f"{name}: expected a token count like '80B', got {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        if not isinstance(value, str):
            raise TheoryError(f"{name}: expected a token count like '80B', got {value!r}")
        match = _PATTERN.match(value)
        if not match:
            raise TheoryError(
                f"{name}: {value!r} is not a token count; use a number with an optional suffix "
                "k, M, B or T (decimal, e.g. '80B', '1.5T', '300k', '12345')"
            )
        sign, mantissa, exponent, suffix = match.groups()
        if suffix.lower() not in _SUFFIXES:
            raise TheoryError(
                f"{name}: {value!r} has an unknown suffix {suffix!r}; use k, M, B or T (decimal)"
            )
        if sign == "-":
            raise TheoryError(f"{name}: {value!r} must be a positive number of tokens")
        try:
            scaled = float(mantissa) * 10.0 ** int(exponent or 0) * _SUFFIXES[suffix.lower()]
        except OverflowError:
            scaled = math.inf
        if not math.isfinite(scaled) or scaled > MAX_TOKENS:
            raise TheoryError(f"{name}: {value!r} is too large (at most 1e18 tokens)")
        number = round(scaled)
        if abs(number - scaled) > 1e-6 * max(1.0, scaled):
            raise TheoryError(f"{name}: {value!r} is not a whole number of tokens")
    if number < 0 or (number == 0 and not allow_zero):
        raise TheoryError(f"{name}: {value!r} must be a positive number of tokens")
    if number > MAX_TOKENS:
        raise TheoryError(f"{name}: {value!r} is too large (at most 1e18 tokens)")
    return number


def format_tokens(tokens: int) -> str:
    """Short human form of a token count, the inverse of :func:`parse_tokens` where exact."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if tokens >= scale:
            quotient = tokens / scale
            text = f"{quotient:.3f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return str(tokens)


def format_tokens_exact(tokens: int) -> str:
    """Like :func:`format_tokens` but never rounded: ``1048576`` is ``1.048576M``, not ``1.049M``.

    Names of artifacts use this form, so two different token counts never share a name.
    """
    if tokens < 0:
        raise TheoryError(f"token count {tokens} is negative")
    for suffix, exponent in (("T", 12), ("B", 9), ("M", 6), ("k", 3)):
        if tokens >= 10**exponent:
            whole, frac = divmod(tokens, 10**exponent)
            digits = str(frac).rjust(exponent, "0").rstrip("0")
            return f"{whole}.{digits}{suffix}" if digits else f"{whole}{suffix}"
    return str(tokens)
