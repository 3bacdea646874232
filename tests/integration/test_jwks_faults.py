"""A JWKS endpoint that hangs, for real: a local HTTP server that accepts and never answers.

The verifier is the real one with the real urllib fetcher. Time for the cache and the
unknown-kid limit comes from a FakeClock (exact windows); the waits are real, and bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from policy_service.identity.config import IssuerConfig
from policy_service.identity.jwks import DEFAULT_WAIT_SECONDS, FAILED_FETCH_RETRY_SECONDS
from policy_service.identity.jwt import JwtVerifier
from policy_service.identity.principal import IdentityFailure, Principal
from policy_service.identity.signing import SigningKey
from policy_service.testing import FakeClock
from tests.support.jwks import JwksServer

ISS = "https://idp.test"
AUD = "https://mcp.test/mcp"
CACHE_SECONDS = 2.0
FETCH_TIMEOUT = 2.0  # the background fetch's own timeout; no check waits this long
CACHED_BOUND = 0.05  # a check whose key is cached: answered at once
REFUSED_BOUND = DEFAULT_WAIT_SECONDS + 0.2  # a check that needs a fetch: well under 1 s
GUARD = 20.0  # no test here may take longer than this, whatever breaks


@pytest.fixture
def server() -> Iterator[JwksServer]:
    jwks_server = JwksServer()
    yield jwks_server
    jwks_server.stop()


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("ES256", kid="key-1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def verifier(server: JwksServer, clock: FakeClock) -> AsyncIterator[JwtVerifier]:
    config = IssuerConfig(
        name="idp",
        issuer=ISS,
        algorithms=("ES256",),
        jwks_url=server.url,
        jwks_cache_seconds=CACHE_SECONDS,
        jwks_min_refresh_seconds=30,
    )
    jwt_verifier = JwtVerifier([config], clock=clock, fetch_timeout_seconds=FETCH_TIMEOUT)
    yield jwt_verifier
    server.answer_again()  # lets a held fetch end before the loop closes
    await jwt_verifier.aclose()


class Tokens:
    """A new token on every call (another subject), so the verified-token cache never
    answers: each check verifies a signature with the issuer's keys."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.count = 0

    def __call__(self, key: SigningKey) -> str:
        self.count += 1
        claims = {"iss": ISS, "sub": f"user-{self.count}", "aud": AUD}
        return key.mint(claims, now=self.clock.now())


async def timed(verifier: JwtVerifier, token: str) -> tuple[Principal | IdentityFailure, float]:
    started = time.monotonic()
    result = await verifier.verify(token, [AUD])
    return result, time.monotonic() - started


async def test_a_hanging_refresh_never_holds_checks_whose_key_is_cached(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    async with asyncio.timeout(GUARD):
        tokens = Tokens(clock)
        server.document = key.jwks()
        await verifier.start()
        assert server.hits == 1
        server.hang()
        clock.advance(31)  # past the cache period and the unknown-kid limit: the refresh hangs

        async def worker() -> list[float]:
            seconds = []
            for _ in range(25):
                result, took = await timed(verifier, tokens(key))
                assert isinstance(result, Principal), result
                seconds.append(took)
                await asyncio.sleep(0.01)
            return seconds

        latencies = [
            s for batch in await asyncio.gather(*(worker() for _ in range(8))) for s in batch
        ]
        assert len(latencies) == 200
        assert max(latencies) < CACHED_BOUND, max(latencies)
        assert server.held == 1  # one refresh in flight, not one per check
        assert server.hanging


async def test_an_unknown_kid_is_refused_in_time_and_picked_up_once_the_endpoint_answers(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    async with asyncio.timeout(GUARD):
        tokens = Tokens(clock)
        server.document = key.jwks()
        await verifier.start()
        rotated = SigningKey.generate("ES256", kid="key-2")
        server.document = {"keys": [key.public_jwk(), rotated.public_jwk()]}
        server.hang()
        clock.advance(31)
        for _ in range(3):
            result, took = await timed(verifier, tokens(rotated))
            assert isinstance(result, IdentityFailure)
            assert result.reason == "unknown_kid"
            assert took < REFUSED_BOUND, took
            cached, took = await timed(verifier, tokens(key))  # the old key meanwhile
            assert isinstance(cached, Principal)
            assert took < CACHED_BOUND, took
        assert server.held == 1

        server.answer_again()  # the held fetch fails; the cache is due again soon after
        await verifier.wait_jwks_idle()
        clock.advance(min(CACHE_SECONDS, FAILED_FETCH_RETRY_SECONDS))
        result, took = await timed(verifier, tokens(rotated))
        assert isinstance(result, Principal), result  # fetched within the check's wait
        assert took < REFUSED_BOUND, took
        assert server.hits == 3


async def test_nothing_cached_and_a_hanging_endpoint_is_unavailable_in_time(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    async with asyncio.timeout(GUARD):
        tokens = Tokens(clock)
        server.hang()
        starting = asyncio.create_task(verifier.start())  # start waits for its fetch; checks don't
        for _ in range(3):
            result, took = await timed(verifier, tokens(key))
            assert isinstance(result, IdentityFailure)
            assert result.reason == "keys_unavailable"
            assert took < REFUSED_BOUND, took
        assert server.held == 1
        server.document = key.jwks()
        server.answer_again()
        await starting
        clock.advance(min(CACHE_SECONDS, FAILED_FETCH_RETRY_SECONDS))
        result, _ = await timed(verifier, tokens(key))
        assert isinstance(result, Principal), result


async def test_a_short_cache_refreshes_on_its_period(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    # jwks_cache_seconds 2 under a 30 s unknown-kid limit: the cache period wins.
    async with asyncio.timeout(GUARD):
        tokens = Tokens(clock)
        server.document = key.jwks()
        await verifier.start()
        for period in range(1, 11):
            clock.advance(CACHE_SECONDS - 0.1)
            assert isinstance(await verifier.verify(tokens(key), [AUD]), Principal)
            assert server.hits == period
            clock.advance(0.1)
            assert isinstance(await verifier.verify(tokens(key), [AUD]), Principal)
            await verifier.wait_jwks_idle()
            assert server.hits == period + 1
        assert verifier.jwks_refreshes() == {"idp": (11, 0)}


async def test_a_rotation_reaches_checks_within_one_cache_period(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    # Real time for the fetch, fake time for the cache: no unknown-kid fetch is allowed (the
    # start fetch was under 30 s ago), so only the cache period brings the new key in.
    async with asyncio.timeout(GUARD):
        tokens = Tokens(clock)
        server.document = key.jwks()
        await verifier.start()
        rotated = SigningKey.generate("ES256", kid="key-2")
        server.document = rotated.jwks()
        result = await verifier.verify(tokens(rotated), [AUD])
        assert isinstance(result, IdentityFailure)
        assert result.reason == "unknown_kid"
        clock.advance(CACHE_SECONDS)
        assert isinstance(await verifier.verify(tokens(rotated), [AUD]), Principal)
        assert server.hits == 2
