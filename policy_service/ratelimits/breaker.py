"""A circuit breaker around the bucket store.

During an outage every check would otherwise pay the store's full timeout. After
``failure_threshold`` consecutive failures the breaker opens: checks skip the store (each
limit then fails open or closed as the bundle says) until ``open_seconds`` have passed.
Then one check probes the store (half-open); success closes the breaker, failure opens it
again for twice as long, up to ``max_open_seconds``. Recovery needs no operator.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from policy_service.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("policy_service.ratelimits")


class BreakerState(StrEnum):
    CLOSED = "closed"  # the store is used
    OPEN = "open"  # the store is skipped
    HALF_OPEN = "half_open"  # one probe is in flight; others skip the store


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        open_seconds: float = 1.0,
        max_open_seconds: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self.max_open_seconds = max_open_seconds
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._current_open = open_seconds
        self._reopen_at = 0.0
        self.opened_count = 0  # times the breaker opened (for stats and tests)

    def allow(self) -> bool:
        """May this check use the store? Moves an expired open breaker to half-open."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock.monotonic() >= self._reopen_at:
            self.state = BreakerState.HALF_OPEN
            return True  # this check is the probe
        return False

    def record_success(self) -> None:
        if self.state is not BreakerState.CLOSED:
            log.info("rate-limit store answered again; circuit closed, limits enforced")
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._current_open = self.open_seconds

    def record_failure(self, reason: str) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._current_open = min(self._current_open * 2, self.max_open_seconds)
            self._open(reason)
            return
        self._failures += 1
        if self.state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open(reason)

    def release_probe(self) -> None:
        """The probe's check was cancelled before the store answered: nothing was learned,
        so go back to open (same cooldown) and let a later check probe."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN
            self._reopen_at = self._clock.monotonic()

    def _open(self, reason: str) -> None:
        self.state = BreakerState.OPEN
        self.opened_count += 1
        self._reopen_at = self._clock.monotonic() + self._current_open
        log.warning(
            "rate-limit store unavailable (%s); circuit open for %.1fs: each limit fails "
            "open or closed as its bundle says",
            reason,
            self._current_open,
        )

    @property
    def retry_after_seconds(self) -> float:
        """How long until the store will be tried again (0 when closed)."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        return max(0.0, self._reopen_at - self._clock.monotonic())
