"""Token-count parsing: the accepted spellings and every refusal."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from theory import TheoryError, format_tokens, parse_tokens


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("80B", 80 * 10**9),
        ("25b", 25 * 10**9),
        ("1.5T", 1_500_000_000_000),
        ("500M", 500_000_000),
        ("300k", 300_000),
        ("300K", 300_000),
        ("12345", 12345),
        (" 2.5e3k ", 2_500_000),
        (7, 7),
    ],
)
def test_accepted_spellings(text: str, tokens: int) -> None:
    assert parse_tokens(text) == tokens


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("80X", "unknown suffix 'X'"),
        ("-5B", "must be a positive"),
        ("0", "must be a positive"),
        ("nan", "is not a token count"),
        ("inf", "is not a token count"),
        ("1e999", "too large"),
        ("", "is not a token count"),
        ("B", "is not a token count"),
        ("1.5", "not a whole number"),
        ("80 B B", "is not a token count"),
        ("2e18", "too large"),
    ],
)
def test_refusals_name_the_value(text: str, message: str) -> None:
    with pytest.raises(TheoryError, match=message) as info:
        parse_tokens(text, name="--window")
    assert "--window" in str(info.value)


def test_non_string_refused() -> None:
    for value in (True, 1.5, None):
        with pytest.raises(TheoryError):
            parse_tokens(value)  # type: ignore[arg-type]


def test_zero_allowed_when_asked() -> None:
    assert parse_tokens("0", allow_zero=True) == 0


@given(st.integers(min_value=1, max_value=10**18))
def test_format_then_parse_is_close(tokens: int) -> None:
    # format_tokens rounds to 3 decimals of its unit; parsing it back lands within that rounding.
    back = parse_tokens(format_tokens(tokens))
    assert abs(back - tokens) <= max(1, tokens * 5e-3)


def test_format_exact_values() -> None:
    assert format_tokens(80 * 10**9) == "80B"
    assert format_tokens(1_500_000_000_000) == "1.5T"
    assert format_tokens(200_704) == "200.704k"
    assert format_tokens(999) == "999"
