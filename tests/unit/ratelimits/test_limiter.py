"""The rate-limit phase over a fake store: verdicts, failure modes, the breaker, stats."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from policy_service.policy.limits import (
    BucketClaim,
    BucketReading,
    CompiledLimit,
    KeyDimension,
    KeyPart,
    StoreFailureMode,
    TakeResult,
)
from policy_service.policy.rates import parse_rate
from policy_service.policy.targets import CallTargets
from policy_service.ratelimits.breaker import BreakerState, CircuitBreaker, Ticket
from policy_service.ratelimits.bucket import BucketSpec
from policy_service.ratelimits.limiter import (
    NOTHING_MATCHED,
    RateLimiter,
    Verdict,
    build_limiter,
)
from policy_service.ratelimits.store import InProcessStore, StoreUnavailableError
from policy_service.testing import FakeClock

ROOMY = BucketReading(remaining=9, retry_after_ms=0, reset_ms=100)


class FakeStore:
    """Answers every take from ``readings`` (by bucket key), fails or hangs on demand."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[list[BucketSpec]] = []
        self.readings: dict[str, BucketReading] = {}
        self.error: StoreUnavailableError | None = None
        self.hang = False
        self.entered = asyncio.Event()
        self.closed = False

    async def take(self, specs: Sequence[BucketSpec]) -> TakeResult:
        self.calls.append(list(specs))
        self.entered.set()
        if self.hang:
            await asyncio.Event().wait()  # never set: only a cancel ends this
        if self.error is not None:
            raise self.error
        readings = tuple(self.readings.get(spec.key, ROOMY) for spec in specs)
        admitted = all(
            reading.retry_after_ms == 0
            for spec, reading in zip(specs, readings, strict=True)
            if spec.enforced
        )
        return TakeResult(admitted, readings)

    async def aclose(self) -> None:
        self.closed = True


class RecordingBreaker(CircuitBreaker):
    """A real breaker that also remembers every failure reason it was told."""

    def __init__(self, clock: FakeClock, failure_threshold: int = 3) -> None:
        super().__init__(failure_threshold=failure_threshold, open_seconds=1.0, clock=clock)
        self.reasons: list[str] = []

    def record_failure(self, reason: str, ticket: Ticket | None = None) -> None:
        self.reasons.append(reason)
        super().record_failure(reason, ticket)


def make_limit(
    name: str,
    *,
    rate: str = "10/s",
    burst: int = 10,
    on_store_failure: StoreFailureMode = StoreFailureMode.OPEN,
    shadow: bool = False,
) -> CompiledLimit:
    return CompiledLimit(
        name=name,
        rate=parse_rate(rate),
        burst=burst,
        cost=1,
        key=(KeyDimension(KeyPart.CLIENT),),
        upstreams=frozenset(),
        targets=CallTargets(),
        on_store_failure=on_store_failure,
        shadow=shadow,
    )


def claim(limit: CompiledLimit, key: str = "", cost: int = 1) -> BucketClaim:
    return BucketClaim(limit, key or f"{limit.name}:bucket", cost)


def refused(retry_after_ms: int) -> BucketReading:
    return BucketReading(remaining=0, retry_after_ms=retry_after_ms, reset_ms=retry_after_ms)


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read through a call so type checkers do not pin it."""
    return breaker.state


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def breaker(clock: FakeClock) -> RecordingBreaker:
    return RecordingBreaker(clock)


@pytest.fixture
def limiter(store: FakeStore, breaker: RecordingBreaker) -> RateLimiter:
    return RateLimiter(store, breaker)


# --- the store answers ---------------------------------------------------------------------


async def test_no_claims_never_asks_the_store(limiter: RateLimiter, store: FakeStore) -> None:
    assert await limiter.check([]) is NOTHING_MATCHED
    assert store.calls == []
    assert limiter.stats.checks == 0


async def test_claims_become_one_store_take_with_their_specs(
    limiter: RateLimiter, store: FakeStore
) -> None:
    enforced = make_limit("per-client", rate="600/min", burst=50)
    shadow = make_limit("trial", rate="1/s", burst=3, shadow=True)
    result = await limiter.check([claim(enforced, "per-client:x", 2), claim(shadow)])
    assert store.calls == [
        [
            BucketSpec("per-client:x", 10.0, 50, 2, True),
            BucketSpec("trial:bucket", 1.0, 3, 1, False),
        ]
    ]
    assert result.verdict is Verdict.ADMITTED
    assert [(s.limit.name, s.remaining) for s in result.states] == [("per-client", 9), ("trial", 9)]
    assert limiter.stats.checks == 1


async def test_exceeded_blames_the_limit_that_frees_up_last(
    limiter: RateLimiter, store: FakeStore
) -> None:
    fine, soon, late = make_limit("fine"), make_limit("soon"), make_limit("late")
    store.readings = {"soon:bucket": refused(300), "late:bucket": refused(900)}
    result = await limiter.check([claim(fine), claim(soon), claim(late)])
    assert result.verdict is Verdict.EXCEEDED
    assert result.blocking is not None
    assert (result.blocking.limit.name, result.blocking.retry_after_ms) == ("late", 900)
    assert [s.exceeded for s in result.states] == [False, True, True]
    assert limiter.stats.exceeded == 1


async def test_a_shadow_limit_is_never_the_blocking_one(
    limiter: RateLimiter, store: FakeStore
) -> None:
    enforced, shadow = make_limit("enforced"), make_limit("trial", shadow=True)
    store.readings = {"enforced:bucket": refused(200), "trial:bucket": refused(5000)}
    result = await limiter.check([claim(enforced), claim(shadow)])
    assert result.verdict is Verdict.EXCEEDED
    assert result.blocking is not None
    assert result.blocking.limit.name == "enforced"
    assert result.shadow_exceeded == ("trial",)


async def test_shadow_exceeded_alone_is_admitted_and_reported(
    limiter: RateLimiter, store: FakeStore
) -> None:
    shadow = make_limit("trial", shadow=True)
    store.readings = {"trial:bucket": refused(700)}
    result = await limiter.check([claim(shadow)])
    assert result.verdict is Verdict.ADMITTED
    assert result.blocking is None
    assert result.shadow_exceeded == ("trial",)
    assert result.enforced == ()
    assert limiter.stats.exceeded == 0


async def test_several_buckets_of_one_limit_report_the_tightest(
    limiter: RateLimiter, store: FakeStore
) -> None:
    per_tool = make_limit("per-tool")
    store.readings = {
        "per-tool:a": BucketReading(remaining=7, retry_after_ms=0, reset_ms=300),
        "per-tool:b": BucketReading(remaining=2, retry_after_ms=0, reset_ms=800),
        "per-tool:c": BucketReading(remaining=5, retry_after_ms=0, reset_ms=500),
    }
    result = await limiter.check(
        [
            claim(per_tool, "per-tool:a"),
            claim(per_tool, "per-tool:b"),
            claim(per_tool, "per-tool:c"),
        ]
    )
    [state] = result.states
    assert (state.remaining, state.reset_ms) == (2, 800)


# --- the store fails -----------------------------------------------------------------------


async def test_store_failure_with_only_fail_open_limits_fails_open(
    limiter: RateLimiter, store: FakeStore
) -> None:
    store.error = StoreUnavailableError("timeout")
    result = await limiter.check([claim(make_limit("a")), claim(make_limit("b"))])
    assert result.verdict is Verdict.FAILED_OPEN
    assert result.store_error == "timeout"
    assert result.states == ()
    assert (limiter.stats.failed_open, limiter.stats.failed_closed) == (1, 0)
    assert limiter.stats.store_errors == {"timeout": 1}


async def test_one_enforced_fail_closed_limit_fails_the_check_closed(
    limiter: RateLimiter, store: FakeStore
) -> None:
    store.error = StoreUnavailableError("connection", "ConnectionRefusedError")
    closed = make_limit("strict", on_store_failure=StoreFailureMode.CLOSED)
    result = await limiter.check([claim(make_limit("lenient")), claim(closed)])
    assert result.verdict is Verdict.FAILED_CLOSED
    assert result.store_error == "connection"
    assert (limiter.stats.failed_open, limiter.stats.failed_closed) == (0, 1)


async def test_a_shadow_fail_closed_limit_alone_fails_open(
    limiter: RateLimiter, store: FakeStore
) -> None:
    store.error = StoreUnavailableError("timeout")
    shadow = make_limit("trial", on_store_failure=StoreFailureMode.CLOSED, shadow=True)
    result = await limiter.check([claim(shadow)])
    assert result.verdict is Verdict.FAILED_OPEN


async def test_store_failures_count_towards_the_breaker(
    limiter: RateLimiter, store: FakeStore, breaker: RecordingBreaker
) -> None:
    store.error = StoreUnavailableError("timeout")
    for _ in range(3):
        await limiter.check([claim(make_limit("a"))])
    assert breaker.reasons == ["timeout", "timeout", "timeout"]
    assert state_of(breaker) is BreakerState.OPEN


async def test_store_success_resets_the_breaker_count(
    limiter: RateLimiter, store: FakeStore, breaker: RecordingBreaker
) -> None:
    limit = make_limit("a")
    store.error = StoreUnavailableError("timeout")
    await limiter.check([claim(limit)])
    await limiter.check([claim(limit)])
    store.error = None
    assert (await limiter.check([claim(limit)])).verdict is Verdict.ADMITTED
    store.error = StoreUnavailableError("timeout")
    await limiter.check([claim(limit)])
    await limiter.check([claim(limit)])
    assert state_of(breaker) is BreakerState.CLOSED


async def test_open_breaker_skips_the_store(
    limiter: RateLimiter, store: FakeStore, breaker: RecordingBreaker
) -> None:
    breaker.record_failure("timeout")
    breaker.record_failure("timeout")
    breaker.record_failure("timeout")
    closed = make_limit("strict", on_store_failure=StoreFailureMode.CLOSED)
    open_result = await limiter.check([claim(make_limit("lenient"))])
    closed_result = await limiter.check([claim(closed)])
    assert store.calls == []
    assert (open_result.verdict, open_result.store_error) == (Verdict.FAILED_OPEN, "circuit_open")
    assert (closed_result.verdict, closed_result.store_error) == (
        Verdict.FAILED_CLOSED,
        "circuit_open",
    )
    assert limiter.stats.store_errors == {"circuit_open": 2}
    assert limiter.stats.checks == 2


async def test_breaker_probe_reaches_the_store_and_closes_it(
    limiter: RateLimiter, store: FakeStore, breaker: RecordingBreaker, clock: FakeClock
) -> None:
    for _ in range(3):
        breaker.record_failure("timeout")
    clock.advance(breaker.retry_after_seconds)
    result = await limiter.check([claim(make_limit("a"))])
    assert result.verdict is Verdict.ADMITTED
    assert len(store.calls) == 1
    assert state_of(breaker) is BreakerState.CLOSED


async def test_cancelled_store_call_is_not_a_store_failure(
    limiter: RateLimiter, store: FakeStore, breaker: RecordingBreaker
) -> None:
    limit = make_limit("a")
    store.error = StoreUnavailableError("timeout")
    await limiter.check([claim(limit)])
    await limiter.check([claim(limit)])
    store.error, store.hang = None, True
    check = asyncio.create_task(limiter.check([claim(limit)]))
    await store.entered.wait()
    check.cancel()
    with pytest.raises(asyncio.CancelledError):
        await check
    # The caller went away: the store is neither blamed nor credited.
    assert breaker.reasons == ["timeout", "timeout"]
    assert state_of(breaker) is BreakerState.CLOSED
    assert limiter.stats.store_errors == {"timeout": 2}
    store.error, store.hang = StoreUnavailableError("timeout"), False
    await limiter.check([claim(limit)])
    assert state_of(breaker) is BreakerState.OPEN  # the count was kept: 2 + 1 = threshold


async def test_cancelled_probe_is_released_for_the_next_check(
    store: FakeStore, clock: FakeClock
) -> None:
    breaker = RecordingBreaker(clock, failure_threshold=1)
    limiter = RateLimiter(store, breaker)
    breaker.record_failure("timeout")
    clock.advance(breaker.retry_after_seconds)
    store.hang = True
    probe = asyncio.create_task(limiter.check([claim(make_limit("a"))]))
    await store.entered.wait()
    assert state_of(breaker) is BreakerState.HALF_OPEN
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.reasons == ["timeout"]
    assert breaker.opened_count == 1  # released, not reopened
    # Without the clock moving, the next check is the new probe; it finds the store well.
    store.hang = False
    result = await limiter.check([claim(make_limit("a"))])
    assert result.verdict is Verdict.ADMITTED
    assert len(store.calls) == 2
    assert state_of(breaker) is BreakerState.CLOSED


# --- lifecycle -----------------------------------------------------------------------------


async def test_aclose_closes_the_store(limiter: RateLimiter, store: FakeStore) -> None:
    await limiter.aclose()
    assert store.closed is True


def test_default_limiter_keeps_buckets_in_process() -> None:
    limiter = build_limiter(None)
    assert isinstance(limiter.store, InProcessStore)
    assert state_of(limiter.breaker) is BreakerState.CLOSED


class SlowStore(FakeStore):
    """Takes wait on ``release``; then each fails (``error``) or answers, as set then."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def take(self, specs: Sequence[BucketSpec]) -> TakeResult:
        self.calls.append(list(specs))
        await self.release.wait()
        return await super().take(specs)


async def test_late_answers_of_calls_sent_before_the_breaker_opened_do_not_close_it(
    clock: FakeClock,
) -> None:
    store = SlowStore()
    breaker = RecordingBreaker(clock, failure_threshold=3)
    limiter = RateLimiter(store, breaker)
    claims = [claim(make_limit("a"))]
    async with asyncio.timeout(5):
        late = [asyncio.create_task(limiter.check(claims)) for _ in range(5)]
        await asyncio.sleep(0)
        assert len(store.calls) == 5  # all sent while closed
        for _ in range(3):
            breaker.record_failure("timeout", breaker.admit())  # others timed out meanwhile
        assert state_of(breaker) is BreakerState.OPEN
        store.release.set()  # Redis answers the slow calls, after the breaker opened
        results = await asyncio.gather(*late)
    assert {result.verdict for result in results} == {Verdict.ADMITTED}
    assert state_of(breaker) is BreakerState.OPEN  # only the probe may close it
    assert (await limiter.check(claims)).store_error == "circuit_open"
    clock.advance(breaker.retry_after_seconds)
    assert (await limiter.check(claims)).verdict is Verdict.ADMITTED  # the probe
    assert state_of(breaker) is BreakerState.CLOSED
    assert (breaker.opened_count, breaker.closed_count) == (1, 1)
