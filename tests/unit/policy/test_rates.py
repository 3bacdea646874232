"""Rate text in a bundle ("600/min", "100/5m") becomes a count per window, or a clear error."""

from __future__ import annotations

import pytest

from policy_service.policy.rates import MAX_WINDOW_SECONDS, Rate, RateSyntaxError, parse_rate


@pytest.mark.parametrize(
    ("text", "count", "window_seconds"),
    [
        ("600/min", 600, 60),
        ("10/s", 10, 1),
        ("100/5m", 100, 300),
        ("1/hour", 1, 3600),
        ("5000/hours", 5000, 3600),
        ("1/day", 1, 86400),
        ("3 / min", 3, 60),
        ("20/30sec", 20, 30),
        ("2/minutes", 2, 60),
        ("7/7d", 7, MAX_WINDOW_SECONDS),
        ("60/MIN", 60, 60),
    ],
)
def test_parse_rate_accepts_count_per_window(text: str, count: int, window_seconds: int) -> None:
    assert parse_rate(text) == Rate(count, window_seconds)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("600/min", 10.0),
        ("10/s", 10.0),
        ("100/5m", 100 / 300),
        ("1/hour", 1 / 3600),
        ("5000/hours", 5000 / 3600),
        ("1/day", 1 / 86400),
    ],
)
def test_per_second_is_count_divided_by_window(text: str, per_second: float) -> None:
    assert parse_rate(text).per_second == pytest.approx(per_second, rel=1e-12)


def test_rate_prints_as_count_per_seconds() -> None:
    assert str(parse_rate("100/5m")) == "100/300s"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "'abc' is not a rate; write <count>/<window>, e.g. '600/min'"),
        ("0/min", "'0/min': the count and the window must be greater than 0"),
        ("10/0s", "'10/0s': the count and the window must be greater than 0"),
        ("10/fortnight", "'10/fortnight': unknown unit 'fortnight'; use s, min, hour or day"),
        ("10/8d", "'10/8d': the window must be at most 7 days"),
        ("", "'' is not a rate; write <count>/<window>, e.g. '600/min'"),
        ("-1/s", "'-1/s' is not a rate; write <count>/<window>, e.g. '600/min'"),
        ("1.5/s", "'1.5/s' is not a rate; write <count>/<window>, e.g. '600/min'"),
        ("10/", "'10/' is not a rate; write <count>/<window>, e.g. '600/min'"),
        ("/min", "'/min' is not a rate; write <count>/<window>, e.g. '600/min'"),
    ],
)
def test_parse_rate_rejects_with_exact_message(text: str, message: str) -> None:
    with pytest.raises(RateSyntaxError) as caught:
        parse_rate(text)
    assert str(caught.value) == message


def test_rate_syntax_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate("ten per minute")


@pytest.mark.parametrize("text", ["10/ms", "10/5ms"])
def test_milliseconds_are_not_read_as_minutes(text: str) -> None:
    # "ms" means milliseconds to everybody; the plural rule ("mins" -> "min") must not turn
    # it into "m" (minutes), a window 60,000 times longer than the author meant.
    with pytest.raises(RateSyntaxError, match="unknown unit 'ms'"):
        parse_rate(text)
