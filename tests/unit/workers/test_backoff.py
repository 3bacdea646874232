"""How long the supervisor waits before restarting a worker that died."""

from __future__ import annotations

from policy_service.workers.backoff import RestartBackoff

BACKOFF = RestartBackoff(first_seconds=0.5, max_seconds=30.0, stable_seconds=30.0)


def test_the_first_restart_waits_the_first_delay() -> None:
    assert BACKOFF.next_delay(None, uptime_seconds=0.1) == 0.5


def test_a_crash_loop_doubles_the_delay_up_to_the_ceiling() -> None:
    delays = []
    delay = None
    for _ in range(10):
        delay = BACKOFF.next_delay(delay, uptime_seconds=0.2)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_a_worker_that_stayed_up_starts_over() -> None:
    assert BACKOFF.next_delay(30.0, uptime_seconds=30.0) == 0.5
    assert BACKOFF.next_delay(30.0, uptime_seconds=29.9) == 30.0
    assert BACKOFF.next_delay(4.0, uptime_seconds=3600) == 0.5
