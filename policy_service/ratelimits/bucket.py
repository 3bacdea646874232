"""The token-bucket arithmetic, in one place for the in-process store.

``token_bucket.lua`` does the same steps inside Redis; the shared contract tests hold the
two to the same answers. A bucket is (tokens, updated): it refills at ``rate`` tokens a
second up to ``burst``, and a missing bucket is a full one, which is why a store may forget
a bucket once it would have refilled (idle expiry costs nothing).

One take covers every bucket a call matches, all or nothing: when an enforced bucket lacks
tokens no bucket is touched, so a refused call never spends budget. A shadow bucket that
lacks tokens is reported but neither refuses nor spends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from policy_service.policy.limits import BucketReading, TakeResult


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """What a store needs to know about one bucket for one take."""

    key: str
    rate_per_second: float
    burst: int
    cost: int
    enforced: bool


@dataclass(frozen=True, slots=True)
class BucketState:
    tokens: float
    updated: float  # seconds, on the store's one clock


def refill(state: BucketState | None, spec: BucketSpec, now: float) -> float:
    if state is None:
        return float(spec.burst)
    elapsed = max(0.0, now - state.updated)  # a clock step backwards never drains a bucket
    return min(float(spec.burst), state.tokens + elapsed * spec.rate_per_second)


def seconds_to(tokens_needed: float, spec: BucketSpec) -> float:
    return max(0.0, tokens_needed) / spec.rate_per_second


def take(
    specs: Sequence[BucketSpec], states: Sequence[BucketState | None], now: float
) -> tuple[TakeResult, list[BucketState | None]]:
    """Decide one take. Returns the result and each bucket's new state (None: unchanged)."""
    tokens = [refill(state, spec, now) for spec, state in zip(specs, states, strict=True)]
    admitted = all(
        available >= spec.cost
        for spec, available in zip(specs, tokens, strict=True)
        if spec.enforced
    )
    readings: list[BucketReading] = []
    new_states: list[BucketState | None] = []
    for spec, available in zip(specs, tokens, strict=True):
        wait = 0.0
        new_state: BucketState | None = None
        if available < spec.cost:
            wait = seconds_to(spec.cost - available, spec)
        elif admitted:
            available -= spec.cost
            new_state = BucketState(available, now)
        readings.append(
            BucketReading(
                remaining=math.floor(available),
                retry_after_ms=math.ceil(wait * 1000),
                reset_ms=math.ceil(seconds_to(spec.burst - available, spec) * 1000),
            )
        )
        new_states.append(new_state)
    return TakeResult(admitted, tuple(readings)), new_states


def idle_expiry_ms(state: BucketState, spec: BucketSpec) -> int:
    """How long a bucket must be kept: until it would be full again, plus a margin."""
    return math.ceil(seconds_to(spec.burst - state.tokens, spec) * 1000) + 1000
