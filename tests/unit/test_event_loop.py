"""The loop `serve` runs on: uvloop by default (a dependency), asyncio's own on request."""

from __future__ import annotations

import asyncio

import uvloop

from policy_service import event_loop
from policy_service.event_loop import EventLoop


async def loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_the_default_loop_is_uvloop() -> None:
    assert event_loop.default_event_loop() is EventLoop.UVLOOP
    assert event_loop.run(loop_type()) is uvloop.Loop


def test_asyncio_can_be_chosen() -> None:
    chosen = event_loop.run(loop_type(), EventLoop.ASYNCIO)
    assert not issubclass(chosen, uvloop.Loop)
    assert issubclass(chosen, asyncio.AbstractEventLoop)
