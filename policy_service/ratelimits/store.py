"""Where buckets live: the store protocol and the in-process store.

A store answers one ``take`` per check, over every bucket the check matched. The Redis
store shares buckets between service replicas; the in-process store is the embedded
default (one process, nothing to run) and gives the same answers: both pass one contract
suite (tests/integration/test_bucket_store_contract.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from policy_service.clock import SYSTEM_CLOCK, Clock
from policy_service.errors import PolicyServiceError
from policy_service.policy.limits import TakeResult
from policy_service.ratelimits.bucket import BucketSpec, BucketState, idle_expiry_ms, take


class StoreUnavailableError(PolicyServiceError):
    """The store did not answer (down, slow, refused). ``reason`` is a short label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(
            f"rate-limit store unavailable: {reason}" + (f" ({detail})" if detail else "")
        )


class BucketStore(Protocol):
    name: str  # "memory" or "redis", for logs

    async def take(self, specs: Sequence[BucketSpec]) -> TakeResult:
        """Refill and take from every bucket at once; raise ``StoreUnavailableError``."""
        ...

    async def aclose(self) -> None: ...


class InProcessStore:
    """Buckets in a dict, for one process. Bounded: the least recently used go first, and a
    forgotten bucket reads as full, as an expired one does in Redis."""

    name = "memory"

    def __init__(self, clock: Clock = SYSTEM_CLOCK, max_buckets: int = 100_000) -> None:
        self._clock = clock
        self._max_buckets = max_buckets
        # key -> (state, monotonic deadline after which it would read as full anyway)
        self._buckets: OrderedDict[str, tuple[BucketState, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, specs: Sequence[BucketSpec]) -> TakeResult:
        # No await between read and write: on one event loop this is atomic.
        now = self._clock.monotonic()
        self._forget_expired(now)
        states = [self._current(spec.key, now) for spec in specs]
        result, new_states = take(specs, states, now)
        for spec, state in zip(specs, new_states, strict=True):
            if state is not None:
                self._buckets[spec.key] = (state, now + idle_expiry_ms(state, spec) / 1000)
                self._buckets.move_to_end(spec.key)
        while len(self._buckets) > self._max_buckets:
            self._buckets.popitem(last=False)
        return result

    def _current(self, key: str, now: float) -> BucketState | None:
        entry = self._buckets.get(key)
        if entry is None:
            return None
        state, expires = entry
        if now >= expires:
            del self._buckets[key]
            return None
        # A bucket that is only read (refused takes) is in use too: keep it from eviction,
        # or a client hammering an empty bucket would get a fresh burst.
        self._buckets.move_to_end(key)
        return state

    def _forget_expired(self, now: float, at_most: int = 8) -> None:
        """Drop a few expired buckets from the least recently used end. Bounded work per
        take; buckets used recently sit at the other end, so the scan stops early."""
        for _ in range(at_most):
            if not self._buckets:
                return
            key, (_, expires) = next(iter(self._buckets.items()))
            if now < expires:
                return
            del self._buckets[key]

    async def aclose(self) -> None:
        self._buckets.clear()
