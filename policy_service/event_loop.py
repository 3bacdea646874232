"""The event loop the service runs on: uvloop where it is installed, else asyncio's own.

Every check crosses the loop several times (gRPC's completion queue, the Redis reply, the
span exporter's hand-off), so the loop's own overhead is paid per check: on the benchmark,
uvloop takes about 7% off the Python gRPC floor's CPU per check. ``asyncio`` stays
selectable, for a platform without uvloop or to rule it out when chasing a problem.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from enum import StrEnum
from typing import Any, TypeVar

from policy_service.errors import ConfigError

T = TypeVar("T")


class EventLoop(StrEnum):
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


def default_event_loop() -> EventLoop:
    return EventLoop.UVLOOP if importlib.util.find_spec("uvloop") else EventLoop.ASYNCIO


def run(main: Coroutine[Any, Any, T], loop: EventLoop | None = None) -> T:
    """``asyncio.run(main)`` on the chosen loop (default: uvloop when installed)."""
    chosen = loop or default_event_loop()
    if chosen is EventLoop.ASYNCIO:
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        main.close()
        raise ConfigError(
            "--event-loop uvloop: uvloop is not installed (pip install uvloop)"
        ) from None
    return uvloop.run(main)
