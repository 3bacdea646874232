"""A slow Redis, for real: the redis-server is paused (SIGSTOP) for less than the breaker's
probe delay while checks keep arriving.

Calls sent just before the breaker opens are answered once Redis resumes, after it opened.
Those late answers say nothing about Redis now: only the probe, sent after the open delay,
may close the breaker. So it opens once, stays open until its probe, and does not flap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from policy_service.dev.redis_server import RedisServer
from policy_service.policy.limits import BucketClaim, CompiledLimit, StoreFailureMode
from policy_service.policy.rates import Rate
from policy_service.policy.targets import CallTargets
from policy_service.ratelimits.breaker import BreakerState, CircuitBreaker
from policy_service.ratelimits.limiter import RateLimiter
from policy_service.ratelimits.redis_store import RedisSettings, RedisStore

STORE_TIMEOUT = 0.1
PROBE_DELAY = 1.0  # open_seconds: how long the breaker stays open before its probe
PAUSE = 0.15  # longer than the store timeout (calls fail), shorter than the probe delay
ARRIVALS_PER_TICK = 2  # a tick is about 1 ms: some 1000-2000 checks a second
GUARD = 30.0

CLAIMS = (
    BucketClaim(
        CompiledLimit(
            name="lenient",
            rate=Rate(1_000_000, 1),
            burst=1_000_000,
            cost=1,
            key=(),
            upstreams=frozenset(),
            targets=CallTargets(),
            on_store_failure=StoreFailureMode.OPEN,
            shadow=False,
        ),
        "lenient:global",
        1,
    ),
)


@dataclass
class Watch:
    """Checks arriving at a steady rate, as Envoy sends them (a new check does not wait for
    the last one's answer), and every state the breaker showed, with its time."""

    limiter: RateLimiter
    states: list[tuple[float, BreakerState]] = field(default_factory=list)
    slowest: float = 0.0
    checks: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def _note(self) -> None:
        state = self.limiter.breaker.state
        if not self.states or self.states[-1][1] is not state:
            self.states.append((time.monotonic(), state))

    async def _check(self) -> None:
        started = time.monotonic()
        await self.limiter.check(CLAIMS)
        self.slowest = max(self.slowest, time.monotonic() - started)
        self.checks += 1
        self._note()

    async def _arrivals(self) -> None:
        running: set[asyncio.Task[None]] = set()
        while not self._stop.is_set():
            for _ in range(ARRIVALS_PER_TICK):
                task = asyncio.create_task(self._check())
                running.add(task)
                task.add_done_callback(running.discard)
            self._note()
            await asyncio.sleep(0.001)
        await asyncio.gather(*running)

    async def run(self, body: asyncio.Task[None]) -> None:
        arrivals = asyncio.create_task(self._arrivals())
        try:
            await body
        finally:
            self._stop.set()
            await arrivals

    def entered(self, state: BreakerState) -> list[float]:
        return [at for at, seen in self.states if seen is state]


@pytest.fixture
async def limiter(clean_redis: RedisServer) -> AsyncIterator[RateLimiter]:
    breaker = CircuitBreaker(failure_threshold=3, open_seconds=PROBE_DELAY, max_open_seconds=4.0)
    store = RedisStore(RedisSettings(clean_redis.url, timeout_seconds=STORE_TIMEOUT))
    limiter = RateLimiter(store, breaker)
    try:
        yield limiter
    finally:
        clean_redis.resume()
        await limiter.aclose()


async def pause_for(server: RedisServer, seconds: float) -> None:
    await asyncio.to_thread(server.pause)
    try:
        await asyncio.sleep(seconds)
    finally:
        await asyncio.to_thread(server.resume)


async def test_a_pause_shorter_than_the_probe_delay_opens_once_and_closes_on_the_probe(
    limiter: RateLimiter, clean_redis: RedisServer
) -> None:
    watch = Watch(limiter)
    breaker = limiter.breaker

    async def scenario() -> None:
        await asyncio.sleep(0.2)
        await pause_for(clean_redis, PAUSE)
        deadline = time.monotonic() + PROBE_DELAY + 2
        while breaker.state is not BreakerState.CLOSED or breaker.closed_count == 0:
            assert time.monotonic() < deadline, watch.states
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)

    async with asyncio.timeout(GUARD):
        await watch.run(asyncio.create_task(scenario()))

    assert watch.checks > 200
    assert watch.slowest < 1.0  # each check waits at most the store timeout
    assert (breaker.opened_count, breaker.closed_count) == (1, 1), watch.states
    opened, closed = watch.entered(BreakerState.OPEN), watch.entered(BreakerState.CLOSED)
    assert len(opened) == 1, watch.states
    assert len(closed) == 2, watch.states  # at the start, and once after the probe
    assert closed[1] - opened[0] >= PROBE_DELAY - 0.05, watch.states  # open until the probe


async def test_a_redis_that_keeps_stalling_backs_the_breaker_off_instead_of_flapping(
    limiter: RateLimiter, clean_redis: RedisServer
) -> None:
    watch = Watch(limiter)
    breaker = limiter.breaker
    stalls = 10

    async def scenario() -> None:
        await asyncio.sleep(0.2)
        for _ in range(stalls):  # 5 s of a Redis stalling 0.15 s in every 0.5 s
            await pause_for(clean_redis, PAUSE)
            await asyncio.sleep(0.35)

    async with asyncio.timeout(GUARD):
        await watch.run(asyncio.create_task(scenario()))

    assert watch.checks > 200
    assert breaker.opened_count >= 1
    # The breaker stays open a probe delay (or more, once a probe has failed) each time it
    # opens, so 5 s allow at most a handful of openings; a flapping one opens on every stall.
    assert breaker.opened_count <= 1 + (stalls * 0.5) / PROBE_DELAY, watch.states
    assert breaker.closed_count <= breaker.opened_count
