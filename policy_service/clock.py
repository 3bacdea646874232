"""Time as an injected dependency, so tests never sleep to make time pass."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock: token exp/nbf are wall-clock times)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals and refresh limits)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()
