"""The circuit breaker around the bucket store: closed, open, half-open, and back."""

from __future__ import annotations

import logging

import pytest

from policy_service.ratelimits.breaker import BreakerState, CircuitBreaker
from policy_service.testing import FakeClock

LOGGER = "policy_service.ratelimits"


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read through a call so type checkers do not pin it."""
    return breaker.state


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, open_seconds=2.0, max_open_seconds=5.0, clock=clock)


def fail(breaker: CircuitBreaker, times: int, reason: str = "timeout") -> None:
    for _ in range(times):
        breaker.record_failure(reason)


def open_then_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Open the breaker and let its open time pass, so the next allow() is the probe."""
    fail(breaker, breaker.failure_threshold)
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(breaker.retry_after_seconds)


def test_new_breaker_is_closed_and_allows(breaker: CircuitBreaker) -> None:
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow() is True
    assert breaker.retry_after_seconds == 0.0


def test_opens_after_threshold_consecutive_failures_not_before(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow() is True
    fail(breaker, 1)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.allow() is False
    assert breaker.opened_count == 1


def test_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    breaker.record_success()
    fail(breaker, 2)
    assert state_of(breaker) is BreakerState.CLOSED
    fail(breaker, 1)
    assert state_of(breaker) is BreakerState.OPEN


def test_open_breaker_refuses_until_open_seconds_pass(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.advance(1.999)
    assert breaker.allow() is False
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(0.001)
    assert breaker.allow() is True
    assert state_of(breaker) is BreakerState.HALF_OPEN


def test_half_open_lets_exactly_one_probe_through(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_then_half_open(breaker, clock)
    assert breaker.allow() is True  # the probe
    assert breaker.allow() is False  # everyone else waits for its answer
    clock.advance(60)
    assert breaker.allow() is False  # even much later, while the probe is out


def test_probe_success_closes_the_breaker(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_then_half_open(breaker, clock)
    assert breaker.allow() is True
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert [breaker.allow(), breaker.allow()] == [True, True]
    assert breaker.retry_after_seconds == 0.0


def test_probe_failure_reopens_for_twice_as_long(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_then_half_open(breaker, clock)
    assert breaker.allow() is True
    breaker.record_failure("timeout")  # one failure is enough in half-open
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.retry_after_seconds == pytest.approx(4.0)
    assert breaker.opened_count == 2
    clock.advance(3.9)
    assert breaker.allow() is False
    clock.advance(0.1)
    assert breaker.allow() is True


def test_reopen_time_is_capped_at_max_open_seconds(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_then_half_open(breaker, clock)
    waits = []
    for _ in range(4):
        assert breaker.allow() is True
        breaker.record_failure("timeout")
        waits.append(breaker.retry_after_seconds)
        clock.advance(breaker.retry_after_seconds)
    assert waits == pytest.approx([4.0, 5.0, 5.0, 5.0])


def test_closing_resets_the_open_time_to_its_start(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_then_half_open(breaker, clock)
    breaker.allow()
    breaker.record_failure("timeout")  # now 4 s
    clock.advance(breaker.retry_after_seconds)
    breaker.allow()
    breaker.record_success()
    fail(breaker, 3)
    assert breaker.retry_after_seconds == pytest.approx(2.0)


def test_released_probe_lets_the_next_check_probe_at_once(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_then_half_open(breaker, clock)
    assert breaker.allow() is True  # the probe, whose caller then goes away
    breaker.release_probe()
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.opened_count == 1
    assert breaker.allow() is True  # a new probe, without waiting again
    assert breaker.allow() is False
    breaker.record_failure("timeout")
    assert breaker.retry_after_seconds == pytest.approx(4.0)  # doubled once, not twice


def test_release_probe_does_nothing_unless_half_open(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    breaker.release_probe()
    assert state_of(breaker) is BreakerState.CLOSED
    fail(breaker, 3)
    breaker.release_probe()
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.retry_after_seconds == pytest.approx(2.0)
    assert breaker.allow() is False


def test_retry_after_counts_down_with_the_clock(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    assert breaker.retry_after_seconds == pytest.approx(2.0)
    clock.advance(1.5)
    assert breaker.retry_after_seconds == pytest.approx(0.5)
    clock.advance(10)
    assert breaker.retry_after_seconds == 0.0


def test_opening_logs_a_warning_with_the_reason(
    breaker: CircuitBreaker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        fail(breaker, 2, "connection")
        assert caplog.records == []
        fail(breaker, 1, "connection")
    [record] = caplog.records
    assert (record.name, record.levelno) == (LOGGER, logging.WARNING)
    assert record.getMessage() == (
        "rate-limit store unavailable (connection); circuit open for 2.0s: each limit fails "
        "open or closed as its bundle says"
    )


def test_closing_logs_info(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    open_then_half_open(breaker, clock)
    breaker.allow()
    caplog.clear()  # forget the warning the opening logged
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        breaker.record_success()
        breaker.record_success()  # already closed: nothing more to say
    [record] = caplog.records
    assert (record.name, record.levelno) == (LOGGER, logging.INFO)
    assert "circuit closed" in record.getMessage()


def test_success_while_closed_logs_nothing(
    breaker: CircuitBreaker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        breaker.record_failure("timeout")
        breaker.record_success()
    assert caplog.records == []


# --- tickets: only calls admitted in the current generation move the breaker ------------


def opened_by_fresh_calls(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        ticket = breaker.admit()
        assert ticket is not None
        breaker.record_failure("timeout", ticket)
    assert state_of(breaker) is BreakerState.OPEN


def test_a_call_started_before_the_breaker_opened_cannot_close_it(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    slow = breaker.admit()  # sent while closed; Redis answers it late
    assert slow is not None
    opened_by_fresh_calls(breaker)
    breaker.record_success(slow)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.allow() is False
    assert breaker.retry_after_seconds == pytest.approx(2.0)
    assert breaker.closed_count == 0


def test_a_late_success_does_not_steal_the_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    slow = breaker.admit()
    assert slow is not None
    opened_by_fresh_calls(breaker)
    clock.advance(breaker.retry_after_seconds)
    probe = breaker.admit()
    assert probe is not None
    breaker.record_success(slow)  # answered while the probe is out
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.admit() is None
    breaker.record_success(probe)
    assert state_of(breaker) is BreakerState.CLOSED
    assert (breaker.opened_count, breaker.closed_count) == (1, 1)


def test_a_late_failure_neither_reopens_nor_lengthens_the_wait(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    slow = breaker.admit()
    assert slow is not None
    opened_by_fresh_calls(breaker)
    breaker.record_failure("timeout", slow)  # while open: not counted
    assert breaker.opened_count == 1
    clock.advance(breaker.retry_after_seconds)
    probe = breaker.admit()
    assert probe is not None
    breaker.record_failure("timeout", slow)  # while half-open: not the probe's answer
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.record_failure("timeout", probe)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.retry_after_seconds == pytest.approx(4.0)  # doubled once
    assert breaker.opened_count == 2


def test_a_cancelled_call_other_than_the_probe_does_not_release_it(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    slow = breaker.admit()
    assert slow is not None
    opened_by_fresh_calls(breaker)
    clock.advance(breaker.retry_after_seconds)
    probe = breaker.admit()
    breaker.release_probe(slow)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.admit() is None  # still one probe at a time
    breaker.release_probe(probe)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.admit() is not None  # a new probe at once


def test_a_probe_ticket_is_spent_once_the_probe_has_answered(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    opened_by_fresh_calls(breaker)
    clock.advance(breaker.retry_after_seconds)
    probe = breaker.admit()
    assert probe is not None
    breaker.record_success(probe)
    fail(breaker, 2)
    breaker.record_success(probe)  # the old probe again: not a success of the new period
    fail(breaker, 1)
    assert state_of(breaker) is BreakerState.OPEN


def test_a_success_from_before_an_outage_does_not_reset_the_count_after_it(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    before = breaker.admit()
    assert before is not None
    opened_by_fresh_calls(breaker)
    clock.advance(breaker.retry_after_seconds)
    probe = breaker.admit()
    assert probe is not None
    breaker.record_success(probe)
    opened_again = breaker.opened_count
    for _ in range(breaker.failure_threshold - 1):
        breaker.record_failure("timeout", breaker.admit())
    breaker.record_success(before)
    breaker.record_failure("timeout", breaker.admit())
    assert breaker.opened_count == opened_again + 1


def test_admitting_in_the_closed_state_hands_out_one_ticket_per_generation(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    first, second = breaker.admit(), breaker.admit()
    assert first is second  # nothing allocated per call on the hot path
    opened_by_fresh_calls(breaker)
    clock.advance(breaker.retry_after_seconds)
    probe = breaker.admit()
    assert probe is not None
    breaker.record_success(probe)
    assert breaker.admit() not in (first, probe)
