"""RateLimit / RateLimit-Policy fields and Retry-After, as exact strings."""

from __future__ import annotations

import pytest

from policy_service.policy.limits import (
    CompiledLimit,
    KeyDimension,
    KeyPart,
    StoreFailureMode,
)
from policy_service.policy.rates import parse_rate
from policy_service.policy.targets import CallTargets
from policy_service.ratelimits.headers import ratelimit_headers, reset_seconds, retry_after_seconds
from policy_service.ratelimits.limiter import LimitState


def make_limit(name: str, rate: str, *, shadow: bool = False) -> CompiledLimit:
    parsed = parse_rate(rate)
    return CompiledLimit(
        name=name,
        rate=parsed,
        burst=parsed.count,
        cost=1,
        key=(KeyDimension(KeyPart.CLIENT),),
        upstreams=frozenset(),
        targets=CallTargets(),
        on_store_failure=StoreFailureMode.OPEN,
        shadow=shadow,
    )


def state(
    limit: CompiledLimit, remaining: int, *, retry_after_ms: int = 0, reset_ms: int = 0
) -> LimitState:
    return LimitState(limit, remaining, retry_after_ms, reset_ms)


def test_one_limit() -> None:
    per_client = make_limit("per-client", "600/min")
    headers = ratelimit_headers([state(per_client, 598, reset_ms=200)])
    assert headers == (
        ("ratelimit-policy", '"per-client";q=600;w=60'),
        ("ratelimit", '"per-client";r=598;t=1'),
    )


def test_two_limits_in_order() -> None:
    per_client = make_limit("per-client", "600/min")
    trades = make_limit("trades", "10/hour")
    headers = ratelimit_headers(
        [
            state(per_client, 598, reset_ms=200),
            state(trades, 0, retry_after_ms=359_001, reset_ms=3_600_000),
        ]
    )
    assert headers == (
        ("ratelimit-policy", '"per-client";q=600;w=60, "trades";q=10;w=3600'),
        ("ratelimit", '"per-client";r=598;t=1, "trades";r=0;t=360'),
    )


def test_shadow_limits_are_not_shown() -> None:
    per_client = make_limit("per-client", "100/5m")
    trial = make_limit("trial", "1/s", shadow=True)
    headers = ratelimit_headers(
        [
            state(trial, 0, retry_after_ms=900, reset_ms=1000),
            state(per_client, 40, reset_ms=180_000),
        ]
    )
    assert headers == (
        ("ratelimit-policy", '"per-client";q=100;w=300'),
        ("ratelimit", '"per-client";r=40;t=180'),
    )


def test_only_shadow_limits_give_no_headers() -> None:
    trial = make_limit("trial", "1/s", shadow=True)
    assert ratelimit_headers([state(trial, 0, retry_after_ms=500, reset_ms=1000)]) == ()


def test_no_limits_give_no_headers() -> None:
    assert ratelimit_headers([]) == ()


def test_exhausted_limit_reports_its_retry_not_its_reset() -> None:
    trades = make_limit("trades", "10/hour")
    exhausted = state(trades, 0, retry_after_ms=360_000, reset_ms=3_600_000)
    assert reset_seconds(exhausted) == 360


def test_limit_with_room_reports_time_until_full() -> None:
    trades = make_limit("trades", "10/hour")
    assert reset_seconds(state(trades, 4, reset_ms=2_160_000)) == 2160
    assert reset_seconds(state(trades, 10, reset_ms=0)) == 0


def test_reset_rounds_up_to_whole_seconds() -> None:
    trades = make_limit("trades", "10/s")
    assert reset_seconds(state(trades, 9, reset_ms=1)) == 1
    assert reset_seconds(state(trades, 0, retry_after_ms=1001)) == 2


@pytest.mark.parametrize(
    ("milliseconds", "seconds"),
    [(0, 1), (0.4, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (59_999.5, 60)],
)
def test_retry_after_is_whole_seconds_never_zero(milliseconds: float, seconds: int) -> None:
    assert retry_after_seconds(milliseconds) == seconds
