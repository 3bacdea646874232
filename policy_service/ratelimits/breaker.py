"""A circuit breaker around the bucket store.

During an outage every check would otherwise pay the store's full timeout. After
``failure_threshold`` consecutive failures the breaker opens: checks skip the store (each
limit then fails open or closed as the bundle says) until ``open_seconds`` have passed.
Then one check probes the store (half-open); success closes the breaker, failure opens it
again for twice as long, up to ``max_open_seconds``. Recovery needs no operator.

Each call through the breaker carries the ``Ticket`` that ``admit`` gave it, naming the
breaker's generation when the call started; every transition starts a new generation. An
answer from an older generation is ignored: under a slow store, calls that started before
the breaker opened keep answering after it did, and one of them succeeding must not close
it (nor one failing reopen it for longer). Only the probe's answer moves a half-open
breaker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from policy_service.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("policy_service.ratelimits")


class BreakerState(StrEnum):
    CLOSED = "closed"  # the store is used
    OPEN = "open"  # the store is skipped
    HALF_OPEN = "half_open"  # one probe is in flight; others skip the store


@dataclass(frozen=True, slots=True)
class Ticket:
    """Leave to call the store, stamped with the breaker's generation at the call's start."""

    generation: int


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
        # One ticket per generation, made at the transition: admitting a call allocates nothing.
        self._ticket = Ticket(0)
        self.opened_count = 0  # times the breaker opened (for stats and tests)
        self.closed_count = 0  # times it closed again after a probe (for stats and tests)

    def admit(self) -> Ticket | None:
        """Leave to use the store, or ``None`` to skip it. Moves an expired open breaker to
        half-open: the ticket returned then is the probe's, the only one that can close it."""
        if self.state is BreakerState.CLOSED:
            return self._ticket
        if self.state is BreakerState.OPEN and self._clock.monotonic() >= self._reopen_at:
            self._move(BreakerState.HALF_OPEN)
            return self._ticket  # this check is the probe
        return None

    def allow(self) -> bool:
        """``admit`` for callers that report without a ticket (tests, one call at a time)."""
        return self.admit() is not None

    def record_success(self, ticket: Ticket | None = None) -> None:
        """The store answered the call holding ``ticket`` (``None``: a call started now)."""
        if not self._current(ticket):
            return  # began before the last transition: says nothing about the store now
        if self.state is BreakerState.HALF_OPEN:
            log.info("rate-limit store answered again; circuit closed, limits enforced")
            self.closed_count += 1
            self._current_open = self.open_seconds
            self._move(BreakerState.CLOSED)
        self._failures = 0

    def record_failure(self, reason: str, ticket: Ticket | None = None) -> None:
        """The call holding ``ticket`` failed (``None``: a call started now)."""
        if not self._current(ticket):
            return
        if self.state is BreakerState.HALF_OPEN:
            self._current_open = min(self._current_open * 2, self.max_open_seconds)
            self._open(reason)
            return
        if self.state is not BreakerState.CLOSED:
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open(reason)

    def release_probe(self, ticket: Ticket | None = None) -> None:
        """The call holding ``ticket`` was cancelled before the store answered. If it was the
        probe, nothing was learned: go back to open (same cooldown) and let a later check
        probe. Any other call's cancellation changes nothing."""
        if self.state is BreakerState.HALF_OPEN and self._current(ticket):
            self._reopen_at = self._clock.monotonic()
            self._move(BreakerState.OPEN)

    def _current(self, ticket: Ticket | None) -> bool:
        # Only calls admitted now can hold this generation's ticket: while open none are,
        # and while half-open only the probe is.
        return ticket is None or ticket is self._ticket

    def _move(self, state: BreakerState) -> None:
        self.state = state
        self._ticket = Ticket(self._ticket.generation + 1)

    def _open(self, reason: str) -> None:
        self._failures = 0
        self.opened_count += 1
        self._reopen_at = self._clock.monotonic() + self._current_open
        self._move(BreakerState.OPEN)
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
