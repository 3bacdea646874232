"""Redis going away under load: checks stay bounded, the breaker opens and closes by itself.

A loop of concurrent checks runs in the background while the real redis-server is stopped
(connection refused) or paused (accepted, never answered), then brought back. Each limit
fails open or closed as configured while Redis is gone, the breaker keeps the store from
being asked on every check, and enforcement comes back with no operator. The last test
does the same through the real gRPC server and the Envoy answers it renders.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from policy_service.app import build_servicer
from policy_service.dev.redis_server import RedisServer
from policy_service.pipeline import CheckPipeline
from policy_service.policy.limits import BucketClaim, CompiledLimit, StoreFailureMode
from policy_service.policy.rates import Rate
from policy_service.policy.targets import CallTargets
from policy_service.ratelimits.breaker import BreakerState, CircuitBreaker
from policy_service.ratelimits.limiter import RateLimiter, Verdict
from policy_service.ratelimits.redis_store import RedisSettings, RedisStore
from policy_service.server import PolicyServer, ServerSettings
from policy_service.state import BundleState
from policy_service.telemetry.trail import Trail
from tests.support.bundles import write_test_bundle
from tests.support.checks import check_request, header_dict

HANG_BOUND_SECONDS = 2.0  # a check waits at most the 0.1 s store timeout; this is 20x that
WORKERS = 8
OPEN_SECONDS = 0.2
MAX_OPEN_SECONDS = 0.4
HEALTHY = {Verdict.ADMITTED, Verdict.EXCEEDED}


def limit(name: str, mode: StoreFailureMode) -> CompiledLimit:
    # 100 an hour, burst 40: admitted at first, then exceeded; nothing refills meanwhile.
    return CompiledLimit(
        name=name,
        rate=Rate(100, 3600),
        burst=40,
        cost=1,
        key=(),
        upstreams=frozenset(),
        targets=CallTargets(),
        on_store_failure=mode,
        shadow=False,
    )


FAIL_OPEN = (BucketClaim(limit("lenient", StoreFailureMode.OPEN), "lenient:global", 1),)
FAIL_CLOSED = (BucketClaim(limit("strict", StoreFailureMode.CLOSED), "strict:global", 1),)


@dataclass
class Check:
    phase: str  # the phase when it started; only checks that also ended in it are judged
    ended_in: str
    closed: bool  # a fail-closed limit's check
    verdict: Verdict
    seconds: float
    store_error: str | None


@dataclass
class Load:
    """Workers checking in a loop until stopped, recording every answer by phase."""

    limiter: RateLimiter
    phase: str = "healthy"
    checks: list[Check] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, index: int) -> None:
        claims = FAIL_CLOSED if index % 2 else FAIL_OPEN
        while not self._stop.is_set():
            phase, started = self.phase, time.monotonic()
            result = await self.limiter.check(claims)
            seconds = time.monotonic() - started
            self.checks.append(
                Check(
                    phase,
                    self.phase,
                    bool(index % 2),
                    result.verdict,
                    seconds,
                    result.store_error,
                )
            )
            await asyncio.sleep(0.005)  # an open breaker answers without awaiting anything

    def in_phase(self, phase: str) -> list[Check]:
        return [c for c in self.checks if c.phase == phase and c.ended_in == phase]

    async def run(self, phases: Callable[[Load], Awaitable[None]]) -> None:
        tasks = [asyncio.create_task(self.worker(index)) for index in range(WORKERS)]
        try:
            await phases(self)
        finally:
            self._stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), HANG_BOUND_SECONDS * 5)


@pytest.fixture
async def limiter(clean_redis: RedisServer) -> AsyncIterator[RateLimiter]:
    breaker = CircuitBreaker(
        failure_threshold=3, open_seconds=OPEN_SECONDS, max_open_seconds=MAX_OPEN_SECONDS
    )
    limiter = RateLimiter(RedisStore(RedisSettings(clean_redis.url, timeout_seconds=0.1)), breaker)
    try:
        yield limiter
    finally:
        await limiter.aclose()


async def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.01)


OUTAGES = {
    # how Redis goes away, how it comes back, and the reason the store gives meanwhile
    "stopped": (RedisServer.stop, RedisServer.start, "connection"),
    "paused": (RedisServer.pause, RedisServer.resume, "timeout"),
}


@pytest.mark.parametrize("outage", sorted(OUTAGES))
async def test_an_outage_under_load_fails_each_limit_its_way_and_heals_itself(
    limiter: RateLimiter,
    clean_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
    outage: str,
) -> None:
    caplog.set_level(logging.INFO, logger="policy_service.ratelimits")
    go_away, come_back, reason = OUTAGES[outage]
    store = limiter.store
    assert isinstance(store, RedisStore)
    counted: dict[str, tuple[int, int]] = {}

    async def phases(load: Load) -> None:
        await asyncio.sleep(0.3)
        load.phase = "going"  # checks that overlap the change are not judged
        await asyncio.to_thread(go_away, clean_redis)
        load.phase = "outage"
        counted["before"] = (limiter.stats.checks, store.stats.takes)
        await wait_until(lambda: limiter.breaker.opened_count >= 1, 5)
        await asyncio.sleep(1.0)
        counted["after"] = (limiter.stats.checks, store.stats.takes)
        load.phase = "returning"
        await asyncio.to_thread(come_back, clean_redis)
        await wait_until(lambda: limiter.breaker.state is BreakerState.CLOSED, 5)
        load.phase = "recovered"
        await asyncio.sleep(0.3)

    load = Load(limiter)
    await load.run(phases)

    assert load.checks, "the load never ran"
    slowest = max(load.checks, key=lambda check: check.seconds)
    assert slowest.seconds < HANG_BOUND_SECONDS, slowest
    healthy = load.in_phase("healthy")
    assert healthy
    assert {check.verdict for check in healthy} <= HEALTHY, [
        check for check in healthy if check.verdict not in HEALTHY
    ]

    outage_checks = load.in_phase("outage")
    assert {check.verdict for check in outage_checks if not check.closed} == {Verdict.FAILED_OPEN}
    assert {check.verdict for check in outage_checks if check.closed} == {Verdict.FAILED_CLOSED}
    assert limiter.stats.store_errors.get(reason, 0) >= 1
    assert limiter.stats.store_errors.get("circuit_open", 0) >= 1

    # While the breaker is open the store is skipped: a few failures to open it, then one
    # probe per cooldown, not one call per check.
    checks = counted["after"][0] - counted["before"][0]
    takes = counted["after"][1] - counted["before"][1]
    assert checks > 100
    assert takes <= WORKERS + 2 + 2.0 / OPEN_SECONDS
    assert takes * 4 < checks

    assert limiter.breaker.opened_count >= 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("circuit open" in r.getMessage() and reason in r.getMessage() for r in warnings)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert any("circuit closed" in r.getMessage() for r in infos)

    recovered = load.in_phase("recovered")
    assert len(recovered) > 10
    assert {check.verdict for check in recovered} <= HEALTHY, [
        check for check in recovered if check.verdict not in HEALTHY
    ]


LIMITS = """\
  - name: quotes
    rate: 1/hour
    burst: 2
    key: [client]
    match: {upstreams: [fininfo], tools: [get_quote]}
    on_store_failure: closed
  - name: symbols
    rate: 1/hour
    burst: 2
    key: [client]
    match: {upstreams: [fininfo], tools: [list_symbols]}
    on_store_failure: open
"""


def tool_call(tool: str, token: str) -> external_auth_pb2.CheckRequest:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"symbol": "ACME"}},
    }
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2025-06-18",
    }
    return check_request(headers=headers, body=body)


def status_of(response: external_auth_pb2.CheckResponse) -> int:
    if response.HasField("ok_response"):
        return 200
    assert response.HasField("denied_response")
    return int(response.denied_response.status.code)


async def test_through_the_grpc_server_closed_limits_refuse_and_open_ones_allow_during_an_outage(
    tmp_path: Path, clean_redis: RedisServer
) -> None:
    bundle = write_test_bundle(tmp_path, limits=LIMITS)
    breaker = CircuitBreaker(open_seconds=OPEN_SECONDS, max_open_seconds=MAX_OPEN_SECONDS)
    store = RedisStore(RedisSettings(clean_redis.url, timeout_seconds=0.1))
    gateway = CheckPipeline(BundleState.from_bundle(bundle.bundle), RateLimiter(store, breaker))
    server = PolicyServer(
        build_servicer(gateway, Trail()), ServerSettings(listen=("127.0.0.1:0",), grace_seconds=2)
    )
    await server.start()
    token = bundle.token("fininfo:read", client_id="outage-client")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)

            async def call(tool: str) -> external_auth_pb2.CheckResponse:
                response: external_auth_pb2.CheckResponse = await stub.Check(
                    tool_call(tool, token), timeout=HANG_BOUND_SECONDS * 5
                )
                return response

            assert [status_of(await call("get_quote")) for _ in range(3)] == [200, 200, 429]

            await asyncio.to_thread(clean_redis.stop)
            for _ in range(5):  # before and after the breaker opens
                refused = await call("get_quote")
                assert status_of(refused) == 503
                headers = header_dict(refused.denied_response.headers)
                assert int(headers["retry-after"]) >= 1
                error = json.loads(refused.denied_response.body)["error"]
                assert error["data"]["reason"] == "rate_limit_unavailable"
                assert status_of(await call("list_symbols")) == 200  # fails open
            assert breaker.opened_count >= 1

            await asyncio.to_thread(clean_redis.start)  # an empty Redis: buckets start full
            deadline = time.monotonic() + 5
            while status_of(await call("get_quote")) == 503:
                assert time.monotonic() < deadline, "the breaker never closed"
                await asyncio.sleep(0.05)
            assert breaker.state is BreakerState.CLOSED
            assert [status_of(await call("get_quote")) for _ in range(2)] == [200, 429]
            limited = await call("get_quote")
            assert int(header_dict(limited.denied_response.headers)["retry-after"]) > 3000
            error = json.loads(limited.denied_response.body)["error"]
            assert error["data"]["reason"] == "rate_limited"
            assert error["data"]["limit_name"] == "quotes"
    finally:
        await server.stop()
