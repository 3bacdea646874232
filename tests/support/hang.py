"""A guard that fails a test which hangs, instead of hanging the run (no pytest-timeout here).

SIGALRM raises ``TestHung`` in the main thread, wherever it is: in a blocking write, in an
event loop waiting for a check. The guard is off again when the test ends.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class TestHung(Exception):
    __test__ = False  # not a test class, whatever pytest's name matching thinks


@contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    def hung(signum: int, frame: FrameType | None) -> None:
        raise TestHung(f"the test ran past its {seconds} s guard: something hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
