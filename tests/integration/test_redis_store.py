"""What only the Redis store promises: round trips, script reloads, key layout, expiry,
Redis's clock, pipelining, bounded failures, one shared connection that hands each check
its own reply, logging in and selecting a database, all against a real redis-server (and
the real 3-node cluster where the layout matters)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from policy_service.dev.redis_server import RedisCluster, RedisServer
from policy_service.ratelimits.bucket import BucketSpec
from policy_service.ratelimits.redis_store import SCRIPT_SHA, RedisSettings, RedisStore
from policy_service.ratelimits.resp import RespClient, RespConnectionError
from policy_service.ratelimits.store import StoreUnavailableError
from tests.support.envoy import free_port
from tests.support.redis import ACL_PASSWORD, ACL_USER, LockedRedis, sync_client

PER_HOUR = 1 / 3600
HOUR_MS = 3_600_000
HANG_BOUND_SECONDS = 1.0  # "did not hang": ten times the 0.1 s timeout, never a speed test


def bucket(key: str, *, burst: int = 10, rate: float = PER_HOUR, cost: int = 1) -> BucketSpec:
    return BucketSpec(key, rate, burst, cost, True)


@pytest.fixture
async def make_store(
    clean_redis: RedisServer,
) -> AsyncIterator[Callable[..., RedisStore]]:
    """Stores on the module's server (flushed), closed after the test."""
    made: list[RedisStore] = []

    def make(**overrides: Any) -> RedisStore:
        # Generous unless a test is about timeouts: a busy machine must not fail a take.
        settings: dict[str, Any] = {"url": clean_redis.url, "timeout_seconds": 1.0, **overrides}
        store = RedisStore(RedisSettings(**settings))
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def evalsha_calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_each_take_is_one_round_trip_and_one_evalsha(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer
) -> None:
    store = make_store()
    await store.take([bucket("warm")])  # loads the script if this server lacks it
    takes, round_trips = store.stats.takes, store.stats.round_trips
    with sync_client(clean_redis.url) as client:
        client.config_resetstat()
        for index in range(30):
            specs = [bucket(f"a-{index % 3}"), bucket("shared")][: 1 + index % 2]
            await store.take(specs)
        assert evalsha_calls(client) == 30
        # No EVAL, no SCRIPT LOAD; the script's own HMGET/HSET/... are counted by Redis too.
        assert not {"cmdstat_eval", "cmdstat_script"} & set(client.info("commandstats"))
    assert store.stats.takes - takes == 30
    assert store.stats.round_trips - round_trips == 30


async def test_each_take_is_one_evalsha_on_the_cluster(clean_cluster: RedisCluster) -> None:
    store = RedisStore(RedisSettings(clean_cluster.url, cluster=True, timeout_seconds=0.5))
    try:
        await store.take([bucket("warm")])
        clients = [sync_client(node.url) for node in clean_cluster.nodes]
        try:
            for client in clients:
                client.config_resetstat()
            before = store.stats.round_trips
            for index in range(20):
                await store.take([bucket(f"c-{index % 4}"), bucket("shared")])
            assert store.stats.round_trips - before == 20
            assert sum(evalsha_calls(client) for client in clients) == 20
        finally:
            for client in clients:
                client.close()
    finally:
        await store.aclose()


async def test_a_flushed_script_cache_is_reloaded_once_and_the_take_succeeds(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer
) -> None:
    store = make_store()
    spec = bucket("survives-flush", burst=5)
    assert (await store.take([spec])).readings[0].remaining == 4
    loads = store.stats.script_loads
    with sync_client(clean_redis.url) as client:
        client.script_flush()
        assert client.script_exists(SCRIPT_SHA) == [False]
        result = await store.take([spec])
        assert client.script_exists(SCRIPT_SHA) == [True]
    assert result.admitted
    assert result.readings[0].remaining == 3  # the buckets survived; only the script went
    assert store.stats.script_loads - loads == 1
    assert (await store.take([spec])).readings[0].remaining == 2
    assert store.stats.script_loads - loads == 1


async def test_pipelined_takes_after_a_script_flush_reload_it_once_for_the_whole_batch(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer
) -> None:
    store = make_store(pipeline=True, timeout_seconds=2.0)
    spec = bucket("batch-after-flush", burst=30)
    await store.take([bucket("warm")])
    with sync_client(clean_redis.url) as client:
        client.script_flush()
    loads, round_trips = store.stats.script_loads, store.stats.round_trips
    results = await asyncio.gather(*(store.take([spec]) for _ in range(60)))
    assert sum(result.admitted for result in results) == 30
    assert store.stats.script_loads - loads == 1
    assert store.stats.round_trips - round_trips < 60 / 2


async def test_keys_share_one_hash_tag_and_one_cluster_slot(clean_cluster: RedisCluster) -> None:
    settings = RedisSettings(
        clean_cluster.url, cluster=True, timeout_seconds=0.5, key_prefix="tenant-a"
    )
    store = RedisStore(settings)
    names = [f"limit-{index}:client-{index * 7}" for index in range(12)]
    try:
        # One script call over keys of different slots would be refused (CROSSSLOT).
        result = await store.take([bucket(name) for name in names])
        assert result.admitted
        assert store.redis_key("x") == "{tenant-a}:x"
    finally:
        await store.aclose()
    found: dict[int, list[str]] = {}
    for node in clean_cluster.nodes:
        with sync_client(node.url) as client:
            found[node.port] = sorted(client.scan_iter(count=1000))
            slots = {client.cluster("KEYSLOT", key) for key in found[node.port]}
            assert slots <= {key_slot(b"tenant-a")}
    holders = [port for port, keys in found.items() if keys]
    assert len(holders) == 1  # one slot, so one shard holds every bucket
    assert found[holders[0]] == sorted(f"{{tenant-a}}:{name}" for name in names)
    # Plain names would have spread over the shards.
    assert len({key_slot(name.encode()) for name in names}) > 1


async def test_an_idle_bucket_expires_when_it_would_be_full_plus_a_second(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer
) -> None:
    store = make_store()
    slow = bucket("slow", burst=2)  # one token short of full: an hour to refill
    fast = bucket("fast", burst=1, rate=100.0)  # empty: 10 ms to refill
    await store.take([slow])
    await store.take([fast])
    with sync_client(clean_redis.url) as client:
        slow_ttl = client.pttl(store.redis_key("slow"))
        fast_ttl = client.pttl(store.redis_key("fast"))
        assert HOUR_MS + 1000 - 10_000 <= slow_ttl <= HOUR_MS + 1000
        assert 500 <= fast_ttl <= 10 + 1000
        await asyncio.sleep(fast_ttl / 1000 + 0.1)
        assert client.exists(store.redis_key("fast")) == 0  # a full bucket costs nothing
        assert client.exists(store.redis_key("slow")) == 1
    again = await store.take([fast])
    assert again.admitted
    assert again.readings[0].remaining == 0


async def test_a_refused_take_writes_nothing(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer
) -> None:
    store = make_store()
    spec = bucket("untouched-on-refusal", burst=1)
    await store.take([spec])
    key = store.redis_key(spec.key)
    with sync_client(clean_redis.url) as client:
        state = client.hgetall(key)
        ttl = client.pttl(key)
        assert not (await store.take([spec])).admitted
        assert client.hgetall(key) == state
        assert client.pttl(key) <= ttl
        assert not (await store.take([bucket("never-admitted", burst=1, cost=2)])).admitted
        assert client.exists(store.redis_key("never-admitted")) == 0


async def test_the_bucket_clock_is_redis_time_not_the_service_clock(
    make_store: Callable[..., RedisStore],
    clean_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_store()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86_400)  # a replica a day ahead
    with sync_client(clean_redis.url) as client:
        seconds, micros = client.time()
        before = seconds + micros / 1e6
        await store.take([bucket("clocked")])
        seconds, micros = client.time()
        after = seconds + micros / 1e6
        updated = float(client.hget(store.redis_key("clocked"), "u") or "nan")
    assert before <= updated <= after


async def test_two_replicas_share_buckets_exactly(
    make_store: Callable[..., RedisStore],
) -> None:
    replica_a, replica_b = make_store(), make_store()
    spec = bucket("shared-by-replicas", burst=6)
    remaining = []
    for index in range(6):
        replica = replica_a if index % 2 == 0 else replica_b
        result = await replica.take([spec])
        assert result.admitted
        remaining.append(result.readings[0].remaining)
    assert remaining == [5, 4, 3, 2, 1, 0]
    assert not (await replica_a.take([spec])).admitted
    assert not (await replica_b.take([spec])).admitted


async def test_pipelining_sends_concurrent_takes_together_with_the_same_answers(
    make_store: Callable[..., RedisStore],
) -> None:
    answers: dict[bool, int] = {}
    for pipeline in (False, True):
        store = make_store(pipeline=pipeline, timeout_seconds=2.0)
        await store.take([bucket("warm")])
        takes, round_trips = store.stats.takes, store.stats.round_trips
        spec = bucket(f"piped-{pipeline}", burst=30)
        results = await asyncio.gather(*(store.take([spec]) for _ in range(100)))
        answers[pipeline] = sum(result.admitted for result in results)
        assert store.stats.takes - takes == 100
        if pipeline:
            assert store.stats.round_trips - round_trips < 100 / 2
        else:
            assert store.stats.round_trips - round_trips == 100
    assert answers == {False: 30, True: 30}


async def test_a_pipelined_batch_that_cannot_be_sent_fails_its_checks_at_once(
    make_store: Callable[..., RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(pipeline=True, timeout_seconds=2.0)

    async def refuse(commands: object) -> list[object]:
        raise RespConnectionError("connection to 127.0.0.1:6379 lost")

    monkeypatch.setattr(store.client, "call_many", refuse)
    results = await asyncio.gather(
        *(store.take([bucket("unsendable")]) for _ in range(5)), return_exceptions=True
    )
    # Each check learns why at once; none is left waiting for its 2 s timeout.
    assert [getattr(result, "reason", result) for result in results] == ["connection"] * 5
    monkeypatch.undo()
    assert (await store.take([bucket("sendable")])).admitted  # the flush loop survived


async def test_a_cluster_store_with_no_reachable_node_is_a_connection_failure() -> None:
    nobody = f"redis://127.0.0.1:{free_port()}"
    store = RedisStore(RedisSettings(nobody, cluster=True, timeout_seconds=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as raised:
            await store.take([bucket("unreachable")])
        assert time.monotonic() - started < HANG_BOUND_SECONDS * 2
        assert raised.value.reason == "connection"
    finally:
        await store.aclose()


@pytest.mark.parametrize("topology", ["server", "cluster"])
async def test_takes_beyond_max_connections_wait_for_a_connection_instead_of_failing(
    request: pytest.FixtureRequest, topology: str
) -> None:
    running: RedisServer | RedisCluster = request.getfixturevalue(
        "clean_redis" if topology == "server" else "clean_cluster"
    )
    settings = RedisSettings(
        running.url, cluster=topology == "cluster", timeout_seconds=2.0, max_connections=4
    )
    store = RedisStore(settings)
    try:
        await store.take([bucket("warm")])
        spec = bucket("crowded", burst=20)
        results = await asyncio.gather(
            *(store.take([spec]) for _ in range(100)), return_exceptions=True
        )
    finally:
        await store.aclose()
    errors = [result for result in results if isinstance(result, BaseException)]
    assert errors == []
    assert sum(result.admitted for result in results if not isinstance(result, BaseException)) == 20


@pytest.mark.parametrize("pipeline", [False, True], ids=["direct", "pipelined"])
async def test_a_paused_server_times_out_within_the_budget(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer, pipeline: bool
) -> None:
    store = make_store(pipeline=pipeline, timeout_seconds=0.1)
    await store.take([bucket("warm")])
    clean_redis.pause()
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as raised:
                await store.take([bucket("frozen")])
            assert time.monotonic() - started < HANG_BOUND_SECONDS
            assert raised.value.reason == "timeout"
        # A new connection: accepted by the kernel, never answered.
        fresh = make_store(pipeline=pipeline, timeout_seconds=0.1)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as raised:
            await fresh.take([bucket("frozen")])
        assert time.monotonic() - started < HANG_BOUND_SECONDS
        assert raised.value.reason == "timeout"
    finally:
        clean_redis.resume()
    assert (await store.take([bucket("thawed")])).admitted


@pytest.mark.parametrize("pipeline", [False, True], ids=["direct", "pipelined"])
async def test_a_stopped_server_is_a_connection_failure_and_a_restart_heals_the_same_client(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer, pipeline: bool
) -> None:
    store = make_store(pipeline=pipeline, timeout_seconds=0.5)
    spec = bucket("outlives-the-outage", burst=3)
    assert (await store.take([spec])).readings[0].remaining == 2
    await asyncio.gather(*(store.take([bucket(f"pooled-{n}")]) for n in range(8)))
    clean_redis.stop()
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as raised:
                await store.take([spec])
            assert time.monotonic() - started < HANG_BOUND_SECONDS
            assert raised.value.reason == "connection"
    finally:
        clean_redis.start()  # same port, empty, no scripts loaded
    loads = store.stats.script_loads
    result = await store.take([spec])
    assert result.admitted
    assert result.readings[0].remaining == 2  # a fresh process: the bucket starts full
    assert store.stats.script_loads - loads == 1  # NOSCRIPT, loaded once
    assert (await store.take([spec])).readings[0].remaining == 1
    assert store.stats.script_loads - loads == 1
    # Connections pooled before the outage are not handed out dead, all at once or not.
    results = await asyncio.gather(*(store.take([bucket(f"after-{n}")]) for n in range(8)))
    assert all(result.admitted for result in results)


def connections_made(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


@pytest.mark.parametrize("pipeline", [False, True], ids=["direct", "pipelined"])
async def test_concurrent_takes_share_one_connection_and_each_gets_its_own_reply(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer, pipeline: bool
) -> None:
    store = make_store(pipeline=pipeline, timeout_seconds=5.0)
    with sync_client(clean_redis.url) as client:
        before = connections_made(client)
        # Each check has a bucket of its own size, so a reply handed to the wrong check
        # shows as a wrong remaining count; all share one bucket as well.
        results = await asyncio.gather(
            *(
                store.take([bucket(f"own-{index}", burst=index + 2), bucket("shared", burst=300)])
                for index in range(200)
            )
        )
        assert connections_made(client) - before == 1
    assert [result.readings[0].remaining for result in results] == [i + 1 for i in range(200)]
    assert sorted(result.readings[1].remaining for result in results) == list(range(100, 300))


async def test_a_take_that_timed_out_never_hands_its_reply_to_the_next_take(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer
) -> None:
    store = make_store(timeout_seconds=0.5)
    await store.take([bucket("warm")])
    client = store.client
    assert isinstance(client, RespClient)
    # A BLPOP on the store's own connection holds every later command there behind it.
    gate = asyncio.create_task(client.execute("BLPOP", "gate", 0))
    await asyncio.sleep(0)
    with pytest.raises(StoreUnavailableError) as raised:
        await store.take([bucket("gave-up", burst=5)])
    assert raised.value.reason == "timeout"
    takes = store.stats.takes
    mine = asyncio.create_task(store.take([bucket("mine", burst=9)]))
    await asyncio.sleep(0)  # it runs up to its write: no other await once connected
    assert store.stats.takes == takes + 1  # its EVALSHA is queued behind the late one
    with sync_client(clean_redis.url) as other:
        other.lpush("gate", "open")  # Redis answers BLPOP, the timed-out take, then mine
    assert (await mine).readings[0].remaining == 8  # its own bucket, not gave-up's 4
    await gate
    # The timed-out take did reach Redis (as with any client): its token is gone.
    assert (await store.take([bucket("gave-up", burst=5)])).readings[0].remaining == 3


@pytest.mark.parametrize("pipeline", [False, True], ids=["direct", "pipelined"])
async def test_a_restart_between_takes_fails_no_take(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer, pipeline: bool
) -> None:
    store = make_store(pipeline=pipeline)
    spec = bucket("across-a-restart", burst=3)
    assert (await store.take([spec])).readings[0].remaining == 2
    # In a thread, so the loop sees the connection close, as a running service does.
    await asyncio.to_thread(clean_redis.restart)
    loads = store.stats.script_loads
    results = await asyncio.gather(*(store.take([spec]) for _ in range(3)))
    assert sorted(result.readings[0].remaining for result in results) == [0, 1, 2]  # fresh
    # Pipelined, the three go in one batch and one load serves them; direct, each check
    # that met NOSCRIPT before the script was back loads it itself.
    assert 1 <= store.stats.script_loads - loads <= (1 if pipeline else 3)


async def test_buckets_land_in_the_database_the_url_selects(
    make_store: Callable[..., RedisStore], clean_redis: RedisServer
) -> None:
    store = make_store(url=f"redis://127.0.0.1:{clean_redis.port}/5")
    await store.take([bucket("in-db-5")])
    base = f"redis://127.0.0.1:{clean_redis.port}"
    with sync_client(f"{base}/5") as db5, sync_client(f"{base}/0") as db0:
        assert db5.keys() == [store.redis_key("in-db-5")]
        assert db0.keys() == []


@pytest.mark.parametrize("login", ["password", "acl-user"])
async def test_the_store_logs_in_with_the_credentials_in_its_url(
    make_store: Callable[..., RedisStore], locked_redis: LockedRedis, login: str
) -> None:
    url = locked_redis.url() if login == "password" else locked_redis.url(ACL_PASSWORD, ACL_USER)
    store = make_store(url=url)
    assert await store.ping()
    assert (await store.take([bucket("behind-a-password", burst=2)])).readings[0].remaining == 1


async def test_a_wrong_password_is_a_connection_failure_that_never_shows_the_password(
    make_store: Callable[..., RedisStore],
    locked_redis: LockedRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-Password-77"
    store = make_store(url=locked_redis.url(wrong))
    with pytest.raises(StoreUnavailableError) as raised:
        await store.take([bucket("locked-out")])
    assert raised.value.reason == "connection"
    assert f"AUTH refused by 127.0.0.1:{locked_redis.server.port}: WRONGPASS" in str(raised.value)
    assert not await store.ping()
    assert "WRONGPASS" in caplog.text  # the operator learns why at startup
    assert wrong not in str(raised.value) + caplog.text


async def test_a_refused_connection_fails_at_once_not_at_the_timeout(
    make_store: Callable[..., RedisStore],
) -> None:
    store = make_store(url=f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=5.0)
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as raised:
            await store.take([bucket("nobody-home")])
        assert time.monotonic() - started < HANG_BOUND_SECONDS
        assert raised.value.reason == "connection"
