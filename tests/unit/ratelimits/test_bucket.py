"""Token-bucket maths and the in-process store, with time moved only by a FakeClock.

Rates are powers of two where a test waits part of a token, so the float arithmetic is
exact and the pinned milliseconds cannot be off by one through rounding.
"""

from __future__ import annotations

import pytest

from policy_service.policy.limits import BucketReading, TakeResult
from policy_service.ratelimits.bucket import (
    BucketSpec,
    BucketState,
    idle_expiry_ms,
    refill,
    take,
)
from policy_service.ratelimits.store import InProcessStore
from policy_service.testing import FakeClock


def spec(
    key: str = "limit:a",
    *,
    rate: float = 4.0,
    burst: int = 2,
    cost: int = 1,
    enforced: bool = True,
) -> BucketSpec:
    return BucketSpec(key, rate, burst, cost, enforced)


@pytest.fixture
def store(clock: FakeClock) -> InProcessStore:
    return InProcessStore(clock)


async def take_n(store: InProcessStore, specs: list[BucketSpec], times: int) -> list[TakeResult]:
    return [await store.take(specs) for _ in range(times)]


# --- a single bucket -----------------------------------------------------------------------


async def test_new_bucket_starts_full(store: InProcessStore) -> None:
    result = await store.take([spec(burst=5)])
    assert result == TakeResult(True, (BucketReading(remaining=4, retry_after_ms=0, reset_ms=250),))


async def test_new_bucket_admits_a_whole_burst_at_once(store: InProcessStore) -> None:
    results = await take_n(store, [spec(rate=10.0, burst=3)], 3)
    assert [r.admitted for r in results] == [True, True, True]
    assert [r.readings[0].remaining for r in results] == [2, 1, 0]


async def test_take_past_the_burst_is_refused_with_the_exact_wait(store: InProcessStore) -> None:
    bucket = spec(rate=10.0, burst=3)
    await take_n(store, [bucket], 3)
    refused = await store.take([bucket])
    assert refused.admitted is False
    # 10 tokens a second: the next whole token is 100 ms away; full again in 300 ms.
    assert refused.readings == (BucketReading(remaining=0, retry_after_ms=100, reset_ms=300),)


async def test_bucket_refills_as_the_clock_advances(
    store: InProcessStore, clock: FakeClock
) -> None:
    bucket = spec(rate=4.0, burst=2)
    await take_n(store, [bucket], 2)
    clock.advance(0.125)  # half a token
    half = await store.take([bucket])
    assert half.admitted is False
    assert half.readings[0].retry_after_ms == 125
    clock.advance(0.125)  # one whole token
    whole = await store.take([bucket])
    assert whole.admitted is True
    assert whole.readings[0].remaining == 0


async def test_refused_take_does_not_reset_the_refill(
    store: InProcessStore, clock: FakeClock
) -> None:
    bucket = spec(rate=4.0, burst=2)
    await take_n(store, [bucket], 2)
    clock.advance(0.125)
    assert (await store.take([bucket])).admitted is False
    clock.advance(0.125)  # the refused take must not have thrown away the first half token
    assert (await store.take([bucket])).admitted is True


async def test_long_idle_never_fills_above_the_burst(
    store: InProcessStore, clock: FakeClock
) -> None:
    bucket = spec(rate=4.0, burst=3)
    await take_n(store, [bucket], 3)
    clock.advance(3600)
    results = await take_n(store, [bucket], 4)
    assert [r.admitted for r in results] == [True, True, True, False]
    assert results[0].readings[0].remaining == 2


async def test_cost_above_one_takes_that_many_tokens(store: InProcessStore) -> None:
    bucket = spec(rate=4.0, burst=5, cost=2)
    first, second, third = await take_n(store, [bucket], 3)
    assert (first.admitted, first.readings[0].remaining) == (True, 3)
    assert (second.admitted, second.readings[0].remaining) == (True, 1)
    assert third.admitted is False
    # One token left, two needed: one more at 4 a second is 250 ms away.
    assert third.readings[0] == BucketReading(remaining=1, retry_after_ms=250, reset_ms=1000)


async def test_reset_is_the_time_until_the_bucket_is_full_again(store: InProcessStore) -> None:
    bucket = spec(rate=4.0, burst=2)
    first, second, refused = await take_n(store, [bucket], 3)
    assert first.readings[0].reset_ms == 250  # one token short of full
    assert second.readings[0].reset_ms == 500  # two tokens short
    assert refused.readings[0].reset_ms == 500  # a refused take changes nothing


async def test_clock_going_backwards_never_drains_a_bucket(
    store: InProcessStore, clock: FakeClock
) -> None:
    bucket = spec(rate=4.0, burst=2)
    await store.take([bucket])  # one token left
    clock.monotonic_value -= 10.0  # ten seconds back: must not count as -40 tokens
    result = await store.take([bucket])
    assert result.admitted is True
    assert result.readings[0].remaining == 0


# --- several buckets at once ---------------------------------------------------------------


async def test_take_is_all_or_nothing_across_enforced_buckets(store: InProcessStore) -> None:
    roomy = spec("per-client:a", burst=3)
    empty = spec("global:global", burst=1)
    await store.take([empty])
    refused = await store.take([roomy, empty])
    assert refused.admitted is False
    assert refused.readings[0] == BucketReading(remaining=3, retry_after_ms=0, reset_ms=0)
    assert refused.readings[1].retry_after_ms == 250
    # Read the roomy bucket again on its own: the refused call spent nothing from it.
    again = await store.take([roomy])
    assert again.readings[0].remaining == 2


async def test_empty_shadow_bucket_neither_refuses_nor_spends(
    store: InProcessStore, clock: FakeClock
) -> None:
    enforced = spec("per-client:a", burst=3)
    shadow = spec("trial:a", rate=4.0, burst=1, enforced=False)
    await store.take([shadow])  # shadow now empty
    clock.advance(0.125)  # shadow holds half a token
    result = await store.take([enforced, shadow])
    assert result.admitted is True
    assert result.readings[0].remaining == 2
    assert result.readings[1] == BucketReading(remaining=0, retry_after_ms=125, reset_ms=125)
    # Still half a token: the admitted call did not push the shadow bucket below zero.
    assert (await store.take([shadow])).readings[0].retry_after_ms == 125
    clock.advance(0.125)
    whole = await store.take([shadow])
    assert (whole.admitted, whole.readings[0].remaining, whole.readings[0].retry_after_ms) == (
        True,
        0,
        0,
    )


async def test_shadow_bucket_with_tokens_is_counted_on_admitted_calls(
    store: InProcessStore,
) -> None:
    shadow = spec("trial:a", burst=2, enforced=False)
    results = await take_n(store, [shadow], 3)
    assert [r.admitted for r in results] == [True, True, True]
    assert [r.readings[0].remaining for r in results] == [1, 0, 0]
    assert results[2].readings[0].retry_after_ms == 250  # reported exceeded, not refused


async def test_refused_call_does_not_spend_a_shadow_bucket(store: InProcessStore) -> None:
    empty = spec("global:global", burst=1)
    shadow = spec("trial:a", burst=2, enforced=False)
    await store.take([empty])
    refused = await store.take([empty, shadow])
    assert refused.admitted is False
    assert refused.readings[1].remaining == 2
    assert (await store.take([shadow])).readings[0].remaining == 1


# --- how long buckets are kept -------------------------------------------------------------


def test_idle_expiry_is_time_to_full_plus_one_second() -> None:
    bucket = spec(rate=4.0, burst=2)
    assert idle_expiry_ms(BucketState(tokens=1.0, updated=0.0), bucket) == 1250
    assert idle_expiry_ms(BucketState(tokens=2.0, updated=0.0), bucket) == 1000


async def test_idle_bucket_is_kept_until_it_would_have_refilled(
    store: InProcessStore, clock: FakeClock
) -> None:
    bucket = spec("limit:a", rate=4.0, burst=2)
    await take_n(store, [bucket], 2)
    clock.advance(0.25)  # one token back, one still missing
    await store.take([spec("limit:b")])
    assert len(store) == 2
    result = await store.take([bucket])
    assert (result.admitted, result.readings[0].remaining) == (True, 0)


async def test_forgotten_bucket_reads_as_full(store: InProcessStore, clock: FakeClock) -> None:
    bucket = spec("limit:a", rate=4.0, burst=2)
    await take_n(store, [bucket], 2)
    clock.advance(1.5)  # 500 ms to refill + 1 s margin
    result = await store.take([bucket])
    assert (result.admitted, result.readings[0].remaining) == (True, 1)
    assert len(store) == 1


async def test_expired_buckets_are_dropped_when_another_key_is_taken(
    store: InProcessStore, clock: FakeClock
) -> None:
    await store.take([spec("limit:a")])
    await store.take([spec("limit:b")])
    assert len(store) == 2
    clock.advance(60)  # far past both buckets' idle expiry
    await store.take([spec("limit:c")])
    # An idle bucket must not hold memory until the LRU bound pushes it out.
    assert len(store) == 1


async def test_lru_bound_evicts_the_least_recently_used_bucket(clock: FakeClock) -> None:
    store = InProcessStore(clock, max_buckets=2)
    a, b, c = spec("limit:a", burst=2), spec("limit:b", burst=2), spec("limit:c", burst=2)
    await store.take([a])
    await store.take([b])
    await store.take([a])  # a is now empty and the most recently used
    await store.take([c])  # over the bound: b, the oldest, goes
    assert len(store) == 2
    assert (await store.take([a])).admitted is False  # a was kept: still empty
    assert (await store.take([b])).readings[0].remaining == 1  # b was forgotten: full


async def test_bucket_read_by_a_refused_take_counts_as_recently_used(clock: FakeClock) -> None:
    store = InProcessStore(clock, max_buckets=2)
    hammered, quiet, newcomer = spec("limit:a", burst=1), spec("limit:b"), spec("limit:c")
    await store.take([hammered])  # empty
    await store.take([quiet])
    assert (await store.take([hammered])).admitted is False  # used just now, refused
    await store.take([newcomer])  # over the bound: the quiet bucket is the least recent
    # Evicting the refused client's empty bucket instead would hand it a fresh burst.
    assert (await store.take([hammered])).admitted is False


async def test_aclose_forgets_every_bucket(store: InProcessStore) -> None:
    await take_n(store, [spec("limit:a"), spec("limit:b")], 1)
    await store.aclose()
    assert len(store) == 0


# --- the pure function ---------------------------------------------------------------------


def test_pure_take_on_a_missing_bucket_takes_from_a_full_one() -> None:
    bucket = spec(rate=4.0, burst=3, cost=2)
    result, states = take([bucket], [None], now=50.0)
    assert result == TakeResult(True, (BucketReading(remaining=1, retry_after_ms=0, reset_ms=500),))
    assert states == [BucketState(tokens=1.0, updated=50.0)]


def test_pure_take_refused_leaves_every_state_unchanged() -> None:
    roomy, short = spec("a", burst=4), spec("b", rate=2.0, burst=4, cost=3)
    states: list[BucketState | None] = [
        BucketState(tokens=4.0, updated=10.0),
        BucketState(tokens=1.0, updated=10.0),
    ]
    result, new_states = take([roomy, short], states, now=10.5)  # short refills to 2.0
    assert result.admitted is False
    assert new_states == [None, None]
    assert result.readings[1] == BucketReading(remaining=2, retry_after_ms=500, reset_ms=1000)


def test_refill_caps_at_burst_and_ignores_negative_elapsed() -> None:
    bucket = spec(rate=4.0, burst=2)
    assert refill(None, bucket, now=0.0) == 2.0
    assert refill(BucketState(0.0, 100.0), bucket, now=100.25) == 1.0
    assert refill(BucketState(0.0, 100.0), bucket, now=1000.0) == 2.0
    assert refill(BucketState(0.5, 100.0), bucket, now=90.0) == 0.5
