"""Sessions bound to their principal: binding, verdicts, ends, owners, expiry, the local
cache, and the same bindings shared through a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from policy_service.dev.redis_server import RedisServer
from policy_service.identity.principal import CredentialKind, Principal
from policy_service.ratelimits.redis_store import RedisStore
from policy_service.responses.sessions import (
    BindOutcome,
    SessionBindings,
    SessionVerdict,
    owner_of,
    session_key,
)
from policy_service.responses.shared import (
    InProcessState,
    RedisState,
    SharedStateUnavailableError,
)
from policy_service.testing import FakeClock
from tests.support.redis import clean_redis, redis_server, redis_store, sync_client

__all__ = ["clean_redis", "redis_server", "redis_store"]  # fixtures, used by name

ISSUER = "https://idp.test.example"
SESSION = "0c3b9f6e2a4d4f1b8e7a5c9d1f2e3a4b"
TTL = 60.0


def jwt_principal(
    subject: str = "alice",
    *,
    iss: str = ISSUER,
    issuer_name: str = "test-idp",
    scopes: tuple[str, ...] = ("fininfo:read",),
    client_id: str = "agent-1",
    exp: float = 1_700_000_300.0,
) -> Principal:
    return Principal(
        subject=subject,
        issuer=issuer_name,
        client_id=client_id,
        scopes=frozenset(scopes),
        credential=CredentialKind.JWT,
        expires_at=exp,
        claims={"iss": iss, "sub": subject, "exp": exp, "scope": " ".join(scopes)},
    )


ALICE = jwt_principal("alice")
BOB = jwt_principal("bob")


class CountingState(InProcessState):
    """An in-process store that counts reads: a verdict without one came from the cache."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.gets = 0

    async def get(self, key: str) -> str | None:
        self.gets += 1
        return await super().get(key)


@pytest.fixture
def store(clock: FakeClock) -> CountingState:
    return CountingState(clock)


@pytest.fixture
def sessions(store: CountingState, clock: FakeClock) -> SessionBindings:
    return SessionBindings(store, clock=clock)


# --- bind, verdict, end ---------------------------------------------------------------


async def test_a_bound_session_is_its_owners_and_no_one_elses(sessions: SessionBindings) -> None:
    assert await sessions.bind("fininfo", SESSION, ALICE, TTL) is BindOutcome.BOUND
    assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.OWNED
    assert await sessions.verdict("fininfo", SESSION, BOB, TTL) is SessionVerdict.FOREIGN


async def test_an_id_never_bound_is_unknown(sessions: SessionBindings) -> None:
    assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.UNKNOWN


async def test_a_binding_belongs_to_one_upstream(sessions: SessionBindings) -> None:
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    assert await sessions.verdict("currenttime", SESSION, ALICE, TTL) is SessionVerdict.UNKNOWN


async def test_an_ended_session_is_unknown(sessions: SessionBindings) -> None:
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    await sessions.verdict("fininfo", SESSION, ALICE, TTL)  # cached here
    await sessions.end("fininfo", SESSION)
    assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.UNKNOWN


@pytest.mark.parametrize(
    "variant",
    [SESSION.upper(), f" {SESSION}", f"{SESSION} ", f"{SESSION},{SESSION}", SESSION[:-1]],
)
async def test_an_id_spelled_differently_is_not_the_bound_one(
    sessions: SessionBindings, variant: str
) -> None:
    # Ids are compared exactly: a variant is unknown, so an upstream that would read it as
    # the bound session is never reached with it.
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    assert await sessions.verdict("fininfo", variant, ALICE, TTL) is SessionVerdict.UNKNOWN
    assert await sessions.verdict("fininfo", variant, BOB, TTL) is SessionVerdict.UNKNOWN


async def test_an_id_already_bound_to_another_stays_theirs(sessions: SessionBindings) -> None:
    # Only a broken upstream opens one id twice; whoever initialized last must not take it.
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    assert await sessions.bind("fininfo", SESSION, BOB, TTL) is BindOutcome.CONFLICT
    assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.OWNED
    assert await sessions.verdict("fininfo", SESSION, BOB, TTL) is SessionVerdict.FOREIGN


async def test_the_owner_binding_again_keeps_it(sessions: SessionBindings) -> None:
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    assert await sessions.bind("fininfo", SESSION, ALICE, TTL) is BindOutcome.BOUND
    assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.OWNED


async def test_the_store_holds_neither_the_id_nor_the_principal(store: CountingState) -> None:
    await SessionBindings(store).bind("fininfo", SESSION, ALICE, TTL)
    [(key, (value, _))] = store._entries.items()
    assert key == session_key("fininfo", SESSION)
    assert SESSION not in key
    assert value == owner_of(ALICE)
    assert "alice" not in value
    assert ISSUER not in value


# --- owners ------------------------------------------------------------------------------


def test_a_refreshed_token_is_the_same_owner() -> None:
    refreshed = jwt_principal(
        "alice", scopes=("fininfo:read", "fininfo:trade"), client_id="agent-2", exp=1.8e9
    )
    assert owner_of(refreshed) == owner_of(ALICE)


def test_the_token_iss_decides_not_the_bundles_issuer_name() -> None:
    # Renaming an issuer in the bundle keeps its sessions; its tokens' iss is the identity.
    assert owner_of(jwt_principal(issuer_name="renamed-idp")) == owner_of(ALICE)


@pytest.mark.parametrize(
    "other",
    [
        jwt_principal("bob"),
        jwt_principal("alice", iss="https://other-idp.example"),
        jwt_principal("Alice"),
        Principal("alice", "api-key", "ci-bot", frozenset(), CredentialKind.API_KEY),
    ],
    ids=["other-subject", "other-issuer", "subject-case", "api-key-same-subject"],
)
def test_another_principal_is_another_owner(other: Principal) -> None:
    assert owner_of(other) != owner_of(ALICE)


def test_issuer_and_subject_cannot_be_spliced_into_another_pair() -> None:
    first = jwt_principal("b", iss="a\0")
    second = jwt_principal("\0b", iss="a")
    assert owner_of(first) != owner_of(second)


def test_an_api_key_named_like_an_issuer_is_not_that_issuers_subject() -> None:
    api_key = Principal("alice", "api-key", "ci-bot", frozenset(), CredentialKind.API_KEY)
    jwt = jwt_principal("alice", iss="api-key")
    assert owner_of(api_key) != owner_of(jwt)


# --- expiry and refresh -------------------------------------------------------------------


async def test_a_binding_unused_for_its_ttl_expires(
    sessions: SessionBindings, clock: FakeClock
) -> None:
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    clock.advance(TTL - 1)
    assert await sessions.verdict("fininfo", SESSION, BOB, TTL) is SessionVerdict.FOREIGN
    clock.advance(2)
    assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.UNKNOWN


async def test_use_keeps_a_binding_alive(sessions: SessionBindings, clock: FakeClock) -> None:
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    for _ in range(10):  # ten uses, 40 s apart: 400 s, far past one TTL
        clock.advance(40)
        assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.OWNED


async def test_another_principal_replaying_the_id_does_not_keep_it_alive(
    sessions: SessionBindings, clock: FakeClock
) -> None:
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    for _ in range(5):  # 50 s of replays
        clock.advance(10)
        assert await sessions.verdict("fininfo", SESSION, BOB, TTL) is SessionVerdict.FOREIGN
    clock.advance(11)  # 61 s since the owner last used it
    assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.UNKNOWN


async def test_replays_by_another_cannot_starve_the_owners_refresh(
    sessions: SessionBindings, clock: FakeClock
) -> None:
    # Each replay reads the store, so the owner's request right after it is answered from
    # the cache; the owner's use must still restart the TTL, or replays alone would let
    # the owner's busy session expire under it.
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    for _ in range(30):  # 150 s
        clock.advance(5)
        assert await sessions.verdict("fininfo", SESSION, BOB, TTL) is SessionVerdict.FOREIGN
        clock.advance(0.1)
        assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.OWNED


# --- the local cache ----------------------------------------------------------------------


async def test_a_cached_binding_still_refuses_another_principal(
    sessions: SessionBindings, store: CountingState
) -> None:
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    reads = store.gets
    assert await sessions.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.OWNED
    assert await sessions.verdict("fininfo", SESSION, BOB, TTL) is SessionVerdict.FOREIGN
    assert store.gets == reads  # both answered by the cache


async def test_a_binding_ended_by_another_replica_is_unknown_after_a_moment(
    store: CountingState, clock: FakeClock
) -> None:
    here, there = SessionBindings(store, clock=clock), SessionBindings(store, clock=clock)
    await here.bind("fininfo", SESSION, ALICE, TTL)
    await there.end("fininfo", SESSION)
    clock.advance(1.5)
    assert await here.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.UNKNOWN


async def test_a_binding_made_by_another_replica_is_enforced_here(
    store: CountingState, clock: FakeClock
) -> None:
    here, there = SessionBindings(store, clock=clock), SessionBindings(store, clock=clock)
    await there.bind("fininfo", SESSION, ALICE, TTL)
    assert await here.verdict("fininfo", SESSION, BOB, TTL) is SessionVerdict.FOREIGN
    assert await here.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.OWNED


async def test_the_cache_is_bounded(store: CountingState, clock: FakeClock) -> None:
    sessions = SessionBindings(store, max_local=3, clock=clock)
    for index in range(10):
        await sessions.bind("fininfo", f"{SESSION}-{index}", ALICE, TTL)
    assert len(sessions._local) == 3
    # Evicted from the cache is not forgotten: the store still knows every binding.
    verdict = await sessions.verdict("fininfo", f"{SESSION}-0", BOB, TTL)
    assert verdict is SessionVerdict.FOREIGN


# --- Redis -------------------------------------------------------------------------------


async def test_replicas_share_bindings_through_redis(
    redis_store: RedisStore, clean_redis: RedisServer, clock: FakeClock
) -> None:
    here = SessionBindings(RedisState(redis_store), clock=clock)
    there = SessionBindings(RedisState(redis_store), clock=clock)
    await here.bind("fininfo", SESSION, ALICE, TTL)
    assert await there.verdict("fininfo", SESSION, BOB, TTL) is SessionVerdict.FOREIGN
    assert await there.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.OWNED
    await there.end("fininfo", SESSION)
    clock.advance(1.5)  # past what `here` answers from memory
    assert await here.verdict("fininfo", SESSION, ALICE, TTL) is SessionVerdict.UNKNOWN


async def test_redis_holds_a_hashed_key_an_owner_hash_and_the_ttl(
    redis_store: RedisStore, clean_redis: RedisServer
) -> None:
    await SessionBindings(RedisState(redis_store)).bind("fininfo", SESSION, ALICE, TTL)
    with sync_client(clean_redis.url) as client:
        [key] = client.keys("*")
        assert SESSION not in key
        assert key.endswith(session_key("fininfo", SESSION))
        assert client.get(key) == owner_of(ALICE)
        assert 0 < client.pttl(key) <= TTL * 1000


async def test_a_redis_binding_expires_after_its_ttl(
    redis_store: RedisStore, clean_redis: RedisServer, clock: FakeClock
) -> None:
    # Redis keeps its own time: the only test here that waits for real.
    sessions = SessionBindings(RedisState(redis_store), clock=clock)
    await sessions.bind("fininfo", SESSION, ALICE, 0.3)
    clock.advance(1.5)
    await asyncio.sleep(0.5)
    assert await sessions.verdict("fininfo", SESSION, ALICE, 0.3) is SessionVerdict.UNKNOWN


async def test_a_stopped_redis_is_an_error_not_a_verdict(
    redis_store: RedisStore, clean_redis: RedisServer
) -> None:
    sessions = SessionBindings(RedisState(redis_store))
    await sessions.bind("fininfo", SESSION, ALICE, TTL)
    clean_redis.stop()
    other = SessionBindings(RedisState(redis_store))  # nothing cached: it must ask Redis
    with pytest.raises(SharedStateUnavailableError) as raised:
        await other.verdict("fininfo", SESSION, BOB, TTL)
    assert SESSION not in str(raised.value)
    with pytest.raises(SharedStateUnavailableError):
        await sessions.bind("fininfo", "another-session", ALICE, TTL)


async def test_a_refresh_never_brings_back_a_binding_ended_elsewhere(
    store: CountingState, clock: FakeClock
) -> None:
    # TTL 8 s: a restart is due every 2 s, and what was read is trusted for 1 s.
    here, there = SessionBindings(store, clock=clock), SessionBindings(store, clock=clock)
    await here.bind("fininfo", SESSION, ALICE, 8.0)
    clock.advance(1.5)
    assert await here.verdict("fininfo", SESSION, ALICE, 8.0) is SessionVerdict.OWNED  # read
    await there.end("fininfo", SESSION)
    clock.advance(0.6)  # the read is fresh, and a restart is due
    assert await here.verdict("fininfo", SESSION, ALICE, 8.0) is SessionVerdict.UNKNOWN
    assert await store.get(session_key("fininfo", SESSION)) is None
