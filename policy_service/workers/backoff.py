"""How long the supervisor waits before restarting a worker that died."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartBackoff:
    """Doubling delays, so a worker that crashes at once does not spin a core restarting.

    A worker that stayed up ``stable_seconds`` counts as healthy again: its next crash is
    treated as the first (a crash a day must not wait out a delay a crash loop built up).
    """

    first_seconds: float = 0.5
    max_seconds: float = 30.0
    stable_seconds: float = 30.0

    def next_delay(self, previous_seconds: float | None, uptime_seconds: float) -> float:
        """The wait before the next start, after a worker that ran ``uptime_seconds`` died;
        ``previous_seconds`` is the wait before that worker's start (None: none)."""
        if previous_seconds is None or uptime_seconds >= self.stable_seconds:
            return self.first_seconds
        return min(previous_seconds * 2, self.max_seconds)
