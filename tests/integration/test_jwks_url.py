"""JWKS over real HTTP: a stdlib server on 127.0.0.1, the real urllib fetcher.

Time still comes from a FakeClock so cache and rate-limit windows are exact; only the
network is real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from policy_service.identity.config import IssuerConfig
from policy_service.identity.jwt import JwtVerifier
from policy_service.identity.principal import IdentityFailure, Principal
from policy_service.identity.signing import SigningKey
from policy_service.testing import FakeClock
from tests.support.jwks import JwksServer

ISS = "https://idp.test"
AUD = "https://mcp.test/mcp"


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
        algorithms=("ES256", "RS256"),
        jwks_url=server.url,
        jwks_cache_seconds=300,
        jwks_min_refresh_seconds=30,
    )
    jwt_verifier = JwtVerifier([config], clock=clock, fetch_timeout_seconds=2.0)
    yield jwt_verifier
    await jwt_verifier.aclose()


def token(key: SigningKey, clock: FakeClock) -> str:
    return key.mint({"iss": ISS, "sub": "alice", "aud": AUD}, now=clock.now())


async def test_fetch_and_verify(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    server.document = key.jwks()
    await verifier.start()
    assert server.hits == 1
    result = await verifier.verify(token(key, clock), [AUD])
    assert isinstance(result, Principal)
    assert (result.subject, result.issuer) == ("alice", "idp")
    assert server.hits == 1


async def test_rotation_is_picked_up_on_unknown_kid(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    server.document = key.jwks()
    await verifier.start()
    rotated = SigningKey.generate("RS256", kid="key-2")
    server.document = {"keys": [key.public_jwk(), rotated.public_jwk()]}
    clock.advance(31)
    result = await verifier.verify(token(rotated, clock), [AUD])
    assert isinstance(result, Principal)
    assert server.hits == 2
    old = await verifier.verify(token(key, clock), [AUD])
    assert isinstance(old, Principal)
    assert server.hits == 2


async def test_unknown_kid_refresh_is_rate_limited(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    server.document = key.jwks()
    await verifier.start()
    assert server.hits == 1

    async def garbage(n: int) -> str:
        result = await verifier.verify(token(SigningKey.generate(kid=f"junk-{n}"), clock), [AUD])
        assert isinstance(result, IdentityFailure)
        return result.reason

    assert [await garbage(n) for n in range(5)] == ["unknown_kid"] * 5
    assert server.hits == 1  # the start fetch was under 30 s ago
    clock.advance(30)
    assert [await garbage(n) for n in range(5, 10)] == ["unknown_kid"] * 5
    assert server.hits == 2  # one refetch for the whole burst


async def test_server_down_keeps_serving_cached_keys(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    server.document = key.jwks()
    await verifier.start()
    server.stop()
    clock.advance(301)  # the cache is stale, the refresh fails, the old keys still verify
    result = await verifier.verify(token(key, clock), [AUD])
    assert isinstance(result, Principal)
    assert result.subject == "alice"


async def test_server_down_with_nothing_cached_is_keys_unavailable(
    server: JwksServer, verifier: JwtVerifier, key: SigningKey, clock: FakeClock
) -> None:
    server.stop()
    await verifier.start()  # logged, not fatal
    result = await verifier.verify(token(key, clock), [AUD])
    assert isinstance(result, IdentityFailure)
    assert result.reason == "keys_unavailable"
    clock.advance(60)  # a retry is attempted and fails the same way
    result = await verifier.verify(token(key, clock), [AUD])
    assert isinstance(result, IdentityFailure)
    assert result.reason == "keys_unavailable"


async def test_http_error_status_is_a_failed_fetch(
    server: JwksServer, clock: FakeClock, key: SigningKey
) -> None:
    config = IssuerConfig(
        name="idp", issuer=ISS, algorithms=("ES256",), jwks_url=server.url + "-missing"
    )
    jwt_verifier = JwtVerifier([config], clock=clock, fetch_timeout_seconds=2.0)
    await jwt_verifier.start()
    result = await jwt_verifier.verify(token(key, clock), [AUD])
    assert isinstance(result, IdentityFailure)
    assert result.reason == "keys_unavailable"
    assert server.hits == 1
    await jwt_verifier.aclose()
