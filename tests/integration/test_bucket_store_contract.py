"""One contract for every bucket store: the in-process store and Redis must agree.

The same assertions run against ``InProcessStore`` and ``RedisStore`` on a real redis-server
and on a real 3-node Redis Cluster, each with one call per take and with ``pipeline=True``.
Rates are either so slow that the seconds a test takes cannot change a whole token
(1/hour), or fast with only lower-bound waits, so real time passing cannot flake them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from policy_service.dev.redis_server import RedisCluster, RedisServer
from policy_service.policy.limits import BucketReading
from policy_service.ratelimits.bucket import BucketSpec
from policy_service.ratelimits.redis_store import RedisSettings, RedisStore
from policy_service.ratelimits.store import BucketStore, InProcessStore

PER_HOUR = 1 / 3600  # one token an hour: nothing refills while a test runs
HOUR_MS = 3_600_000
# Generous: a take on a slow machine may see a few seconds of refill at one token an hour.
SLACK_MS = 10_000
STORES = ["memory", "redis", "redis-pipelined", "redis-cluster", "redis-cluster-pipelined"]


def bucket(
    key: str, *, burst: int, rate: float = PER_HOUR, cost: int = 1, enforced: bool = True
) -> BucketSpec:
    return BucketSpec(key, rate, burst, cost, enforced)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BucketStore]:
    kind: str = request.param
    made: BucketStore
    if kind == "memory":
        made = InProcessStore()
    else:
        # A generous timeout: this suite is about answers, test_redis_store about timeouts.
        pipelined = kind.endswith("-pipelined")
        running: RedisServer | RedisCluster = request.getfixturevalue(
            "clean_cluster" if kind.startswith("redis-cluster") else "clean_redis"
        )
        cluster = isinstance(running, RedisCluster)
        settings = RedisSettings(
            running.url, cluster=cluster, timeout_seconds=2.0, pipeline=pipelined
        )
        made = RedisStore(settings)
    try:
        # A store that has served before, as in production: the Redis clients have their
        # connections (and the cluster client its slot map) before a test starts.
        assert (await made.take([bucket("warm-up", burst=1)])).admitted
        yield made
    finally:
        await made.aclose()


async def take_one(store: BucketStore, spec: BucketSpec) -> tuple[bool, BucketReading]:
    result = await store.take([spec])
    assert len(result.readings) == 1
    return result.admitted, result.readings[0]


async def test_a_new_bucket_is_full(store: BucketStore) -> None:
    admitted, reading = await take_one(store, bucket("new", burst=5))
    assert admitted
    assert reading.remaining == 4
    assert reading.retry_after_ms == 0
    assert abs(reading.reset_ms - HOUR_MS) <= 1  # one token short of full, at 1/hour


async def test_remaining_counts_down_exactly_to_zero(store: BucketStore) -> None:
    spec = bucket("countdown", burst=5)
    seen = [await take_one(store, spec) for _ in range(5)]
    assert [admitted for admitted, _ in seen] == [True] * 5
    assert [reading.remaining for _, reading in seen] == [4, 3, 2, 1, 0]
    assert all(reading.retry_after_ms == 0 for _, reading in seen)


async def test_a_take_beyond_the_burst_is_refused_with_the_time_to_one_token(
    store: BucketStore,
) -> None:
    spec = bucket("refused", burst=2)
    assert (await take_one(store, spec))[0]
    assert (await take_one(store, spec))[0]
    admitted, reading = await take_one(store, spec)
    assert not admitted
    assert reading.remaining == 0
    assert HOUR_MS - SLACK_MS <= reading.retry_after_ms <= HOUR_MS
    assert 2 * HOUR_MS - SLACK_MS <= reading.reset_ms <= 2 * HOUR_MS
    # Refusals spend nothing, so asking again gives the same answer.
    again_admitted, again = await take_one(store, spec)
    assert not again_admitted
    assert again.remaining == 0
    assert HOUR_MS - SLACK_MS <= again.retry_after_ms <= reading.retry_after_ms


async def test_a_take_over_two_buckets_is_all_or_nothing(store: BucketStore) -> None:
    wide = bucket("wide", burst=3)
    narrow = bucket("narrow", burst=1)
    first = await store.take([wide, narrow])
    assert first.admitted
    assert [r.remaining for r in first.readings] == [2, 0]

    refused = await store.take([wide, narrow])
    assert not refused.admitted
    wide_reading, narrow_reading = refused.readings
    assert wide_reading.remaining == 2  # had enough, yet nothing was taken
    assert wide_reading.retry_after_ms == 0
    assert narrow_reading.remaining == 0
    assert HOUR_MS - SLACK_MS <= narrow_reading.retry_after_ms <= HOUR_MS

    # The refused take drained neither bucket: "wide" still holds its two tokens.
    alone_admitted, alone = await take_one(store, wide)
    assert alone_admitted
    assert alone.remaining == 1


async def test_a_refused_take_does_not_drain_the_bucket_listed_after_the_empty_one(
    store: BucketStore,
) -> None:
    empty = bucket("drained-first", burst=1)
    full = bucket("full-second", burst=4)
    assert (await take_one(store, empty))[0]
    refused = await store.take([empty, full])
    assert not refused.admitted
    assert [r.remaining for r in refused.readings] == [0, 4]
    assert (await take_one(store, full))[1].remaining == 3


async def test_an_empty_shadow_bucket_neither_refuses_nor_spends(store: BucketStore) -> None:
    enforced = bucket("enforced", burst=5)
    shadow = bucket("shadow", burst=1, enforced=False)
    first = await store.take([enforced, shadow])
    assert first.admitted
    assert [r.remaining for r in first.readings] == [4, 0]  # a shadow bucket with tokens counts

    for expected_enforced in (3, 2):
        result = await store.take([enforced, shadow])
        assert result.admitted  # the empty shadow bucket does not refuse
        enforced_reading, shadow_reading = result.readings
        assert enforced_reading.remaining == expected_enforced
        assert shadow_reading.remaining == 0  # not spent below zero
        assert HOUR_MS - SLACK_MS <= shadow_reading.retry_after_ms <= HOUR_MS

    only_shadow = await store.take([shadow])
    assert only_shadow.admitted  # no enforced bucket: nothing can refuse
    assert only_shadow.readings[0].remaining == 0


async def test_a_refused_take_does_not_spend_a_shadow_bucket(store: BucketStore) -> None:
    enforced = bucket("tight", burst=1)
    shadow = bucket("watching", burst=3, enforced=False)
    assert (await store.take([enforced, shadow])).admitted
    refused = await store.take([enforced, shadow])
    assert not refused.admitted
    assert [r.remaining for r in refused.readings] == [0, 2]
    assert (await take_one(store, shadow))[1].remaining == 1


async def test_a_cost_above_one_takes_that_many_tokens(store: BucketStore) -> None:
    spec = bucket("costly", burst=5, cost=2)
    first = await take_one(store, spec)
    second = await take_one(store, spec)
    third = await take_one(store, spec)
    assert (first[0], first[1].remaining) == (True, 3)
    assert (second[0], second[1].remaining) == (True, 1)
    assert not third[0]
    assert third[1].remaining == 1
    assert HOUR_MS - SLACK_MS <= third[1].retry_after_ms <= HOUR_MS  # one token missing
    cheap = await take_one(store, bucket("costly", burst=5, cost=1))
    assert (cheap[0], cheap[1].remaining) == (True, 0)  # the refused take left its token


async def test_a_cost_above_the_burst_is_always_refused(store: BucketStore) -> None:
    admitted, reading = await take_one(store, bucket("too-costly", burst=2, cost=3))
    assert not admitted
    assert reading.remaining == 2
    assert abs(reading.retry_after_ms - HOUR_MS) <= 1  # (cost - burst) tokens away


async def test_an_empty_bucket_refills_after_real_waiting(store: BucketStore) -> None:
    spec = bucket("refills", burst=1, rate=4.0)  # a token every 250 ms
    assert (await take_one(store, spec))[0]
    admitted, reading = await take_one(store, spec)
    assert not admitted
    assert 0 < reading.retry_after_ms <= 250
    await asyncio.sleep(0.3)
    admitted, reading = await take_one(store, spec)
    assert admitted
    assert reading.remaining == 0


async def test_a_bucket_never_refills_above_its_burst(store: BucketStore) -> None:
    spec = bucket("capped", burst=3, rate=20.0)
    assert (await take_one(store, spec))[1].remaining == 2
    await asyncio.sleep(0.3)  # enough for six tokens; the bucket holds three
    admitted, reading = await take_one(store, spec)
    assert admitted
    assert reading.remaining == 2
    assert 0 < reading.reset_ms <= 50  # one token short of full at 20/s


async def test_concurrent_takes_on_one_bucket_admit_exactly_the_burst(
    store: BucketStore,
) -> None:
    spec = bucket("contended", burst=50)
    results = await asyncio.gather(*(store.take([spec]) for _ in range(200)))
    admitted = [result for result in results if result.admitted]
    assert len(admitted) == 50
    assert sorted(result.readings[0].remaining for result in admitted) == list(range(50))
    assert all(result.readings[0].remaining == 0 for result in results if not result.admitted)
