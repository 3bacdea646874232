"""The rate-limit phase: ask the store once, apply shadow mode and failure modes.

The store is asked at most once per check, under the circuit breaker. What a failure means
is decided per limit: "open" limits let the call through unchecked, "closed" ones refuse
it with 503. Shadow limits are counted and reported but never refuse, not even closed ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from opentelemetry import trace

from policy_service.policy.limits import (
    BucketClaim,
    BucketReading,
    CompiledLimit,
    StoreFailureMode,
)
from policy_service.ratelimits.breaker import CircuitBreaker
from policy_service.ratelimits.bucket import BucketSpec
from policy_service.ratelimits.redis_store import RedisSettings, RedisStore
from policy_service.ratelimits.store import BucketStore, InProcessStore, StoreUnavailableError

log = logging.getLogger("policy_service.ratelimits")


class Verdict(StrEnum):
    ADMITTED = "admitted"  # every enforced bucket had enough; all took
    EXCEEDED = "exceeded"  # an enforced bucket lacked tokens; none took
    FAILED_OPEN = "failed_open"  # the store did not answer; every matched limit fails open
    FAILED_CLOSED = "failed_closed"  # the store did not answer; a matched limit fails closed


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit's state after the check: its most constrained bucket."""

    limit: CompiledLimit
    remaining: int
    retry_after_ms: int
    reset_ms: int

    @property
    def exceeded(self) -> bool:
        return self.retry_after_ms > 0


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    verdict: Verdict
    states: tuple[LimitState, ...] = ()  # per matched limit, in bundle order
    store_error: str | None = None  # why the store did not answer

    @property
    def enforced(self) -> tuple[LimitState, ...]:
        return tuple(state for state in self.states if state.limit.enforced)

    @property
    def blocking(self) -> LimitState | None:
        """For EXCEEDED: the enforced limit that frees up last (what Retry-After reports)."""
        exceeded = [state for state in self.enforced if state.exceeded]
        return max(exceeded, key=lambda state: state.retry_after_ms) if exceeded else None

    @property
    def shadow_exceeded(self) -> tuple[str, ...]:
        return tuple(s.limit.name for s in self.states if s.limit.shadow and s.exceeded)


NOTHING_MATCHED = RateLimitResult(Verdict.ADMITTED)


@dataclass
class LimiterStats:
    checks: int = 0
    exceeded: int = 0
    failed_open: int = 0
    failed_closed: int = 0
    store_errors: dict[str, int] = field(default_factory=dict)


class RateLimiter:
    def __init__(self, store: BucketStore, breaker: CircuitBreaker | None = None) -> None:
        self.store = store
        self.breaker = breaker or CircuitBreaker()
        self.stats = LimiterStats()

    async def check(self, claims: Sequence[BucketClaim]) -> RateLimitResult:
        if not claims:
            return NOTHING_MATCHED
        self.stats.checks += 1
        ticket = self.breaker.admit()
        if ticket is None:
            return self._unavailable(claims, "circuit_open")
        specs = [
            BucketSpec(
                claim.key,
                claim.limit.rate.per_second,
                claim.limit.burst,
                claim.cost,
                claim.limit.enforced,
            )
            for claim in claims
        ]
        settled = False
        try:
            result = await self.store.take(specs)
            settled = True
        except StoreUnavailableError as exc:
            settled = True
            self.breaker.record_failure(exc.reason, ticket)
            return self._unavailable(claims, exc.reason)
        finally:
            if not settled:  # cancelled mid-call (the caller went away): not the store's fault
                self.breaker.release_probe(ticket)
        self.breaker.record_success(ticket)
        states = _per_limit(claims, result.readings)
        if result.admitted:
            return RateLimitResult(Verdict.ADMITTED, states)
        self.stats.exceeded += 1
        return RateLimitResult(Verdict.EXCEEDED, states)

    def _unavailable(self, claims: Sequence[BucketClaim], reason: str) -> RateLimitResult:
        errors = self.stats.store_errors
        errors[reason] = errors.get(reason, 0) + 1
        closed = any(
            claim.limit.enforced and claim.limit.on_store_failure is StoreFailureMode.CLOSED
            for claim in claims
        )
        if closed:
            self.stats.failed_closed += 1
            return RateLimitResult(Verdict.FAILED_CLOSED, store_error=reason)
        self.stats.failed_open += 1
        log.debug("rate-limit store unavailable (%s); limits failed open", reason)
        return RateLimitResult(Verdict.FAILED_OPEN, store_error=reason)

    async def aclose(self) -> None:
        await self.store.aclose()


def build_limiter(
    redis_settings: RedisSettings | None, tracer: trace.Tracer | None = None
) -> RateLimiter:
    """The in-process store by default; Redis when a URL is configured."""
    if redis_settings is None:
        return RateLimiter(InProcessStore())
    return RateLimiter(RedisStore(redis_settings, tracer=tracer))


def _per_limit(
    claims: Sequence[BucketClaim], readings: Sequence[BucketReading]
) -> tuple[LimitState, ...]:
    tightest: dict[str, LimitState] = {}
    for claim, reading in zip(claims, readings, strict=True):
        state = LimitState(claim.limit, reading.remaining, reading.retry_after_ms, reading.reset_ms)
        current = tightest.get(claim.limit.name)
        if current is None or (state.retry_after_ms, -state.remaining) > (
            current.retry_after_ms,
            -current.remaining,
        ):
            tightest[claim.limit.name] = state
    return tuple(tightest.values())
