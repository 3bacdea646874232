"""Profile the policy service's Check path in-process, without gRPC or Envoy.

Builds the benchmark's request (``POST /fininfo/mcp``, an MCP ``tools/call`` of ``get_quote``
with a valid ES256 bearer token) as the ``CheckRequest`` Envoy sends, then calls the gRPC
servicer's ``Check`` coroutine directly, in a loop:

1. timed without a profiler: microseconds per check, the ceiling on checks/s per process if
   gRPC, the event loop and the network cost nothing;
2. under cProfile: the functions with the most own time, as a share of the profiled run.

What it leaves out is exactly what ``bench/run.py`` adds: gRPC (HTTP/2 framing, protobuf
wire parsing, the asyncio integration), the loopback network and Envoy. Compare its
microseconds per check with the service CPU per request that run.py implies (service CPU %
/ requests per second) to see how much of the service's time is its own code.

    .venv/bin/python bench/profile_check.py
    .venv/bin/python bench/profile_check.py --tokens 20000 --iterations 20000  # no cache hits
    .venv/bin/python bench/profile_check.py --trail --sampling 1   # the production trail
    .venv/bin/python bench/profile_check.py --trail --sampling 1 --cold   # caches evicted
    .venv/bin/python bench/profile_check.py --record   # serve --record's line per check

``--trail`` turns on what production runs beside the decision: an audit event per check
(written to /dev/null through the real file sink), Prometheus metrics, and tracing with the
real OTLP exporter to ``bench/otlp_sink.py`` in its own process. ``--sampling P`` makes P%
of the checks arrive with a sampled ``traceparent`` (Envoy's ``random_sampling``, followed
by the service) and the rest with an unsampled one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))  # run.py: the benchmark's request, defined once
sys.path.insert(0, str(REPO_ROOT))  # tests.support is not an installed package

from run import (  # noqa: E402
    BENCH_LIMITS,
    REQUEST_BODY,
    REQUEST_HEADERS,
    REQUEST_PATH,
    TOOL_SCOPE,
)


def build_requests(workdir: Path, tokens: int, otlp_port: int | None) -> tuple[Any, Any, list[Any]]:
    """The servicer and gateway for a fresh test bundle, and one CheckRequest per token.

    Without ``otlp_port`` the trail is off (no spans, audit sink or metrics), so the profile
    shows the request path itself; with it, the trail is production's."""
    from policy_service.app import build_gateway, build_servicer, build_trail
    from policy_service.telemetry.audit import FileSink
    from tests.support.bundles import write_test_bundle
    from tests.support.checks import check_request

    bundle = write_test_bundle(workdir, limits=BENCH_LIMITS)
    if otlp_port is None:
        trail = build_trail({})
    else:
        # The exporter and the sampler read os.environ themselves, as in `serve`.
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_port}"
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"  # Envoy's choice rules
        trail = build_trail(
            os.environ,
            audit_sink=FileSink.open(Path("/dev/null")),
            metrics=True,
        )
    gateway = build_gateway(bundle.bundle, trail)
    service = build_servicer(gateway, trail)
    requests = []
    for _ in range(tokens):
        # Roughly what Envoy's ext_authz sends with encode_raw_headers for wrk's request.
        headers = [
            (":authority", "127.0.0.1:8080"),
            (":path", REQUEST_PATH),
            (":method", "POST"),
            (":scheme", "http"),
            *((name.lower(), value) for name, value in REQUEST_HEADERS),
            ("authorization", f"Bearer {bundle.token(TOOL_SCOPE, lifetime=3600)}"),
            ("content-length", str(len(REQUEST_BODY))),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "6c1f0e4e-1d7b-4c1e-9a7e-3b9f1f1d2a10"),
        ]
        requests.append(
            check_request(
                path=REQUEST_PATH,
                headers=headers,
                body=REQUEST_BODY.encode(),
                context_extensions={"upstream": "fininfo", "protocol": "mcp"},
            )
        )
    return service, gateway, requests


class EnvoyCallContext:
    """The servicer reads only the call's metadata: what Envoy sends with a check."""

    def __init__(self, traceparent: str | None = None) -> None:
        self.metadata: tuple[tuple[str, str], ...] = (("x-envoy-internal", "true"),)
        if traceparent is not None:
            self.metadata += (("traceparent", traceparent),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


CONTEXT = EnvoyCallContext()


def call_contexts(sampling_percent: float | None) -> list[EnvoyCallContext]:
    """One context per check of a cycle of 1,000: sampled ones carry a sampled traceparent
    (Envoy's ext_authz span), the others an unsampled one, as Envoy sends them."""
    if sampling_percent is None:
        return [CONTEXT]
    sampled = round(sampling_percent * 10)
    return [
        EnvoyCallContext(
            f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-"
            f"{'01' if i < sampled else '00'}"
        )
        for i in range(1000)
    ]


class CacheEvictor:
    """Writes to 16 MiB of memory (a cache line per page) and to 4,000 dicts spread over
    200,000: what the gRPC core, Envoy and the load generator do to the CPU caches between
    two checks in a real server on a shared machine. A check timed in a tight loop finds
    its code and data cached; in the server it does not, and costs about twice as much."""

    def __init__(self) -> None:
        self._memory = bytearray(16 << 20)
        self._objects = [{"n": index} for index in range(200_000)]
        self._line = b"x" * 64
        self.seconds = 0.0  # spent evicting: taken off the checks' time

    def __call__(self) -> None:
        started = time.process_time()
        memory, line = self._memory, self._line
        for offset in range(0, len(memory), 4096):
            memory[offset : offset + 64] = line
        for entry in self._objects[::50]:
            entry["n"] += 1
        self.seconds += time.process_time() - started


async def run_checks(
    service: Any,
    requests: Sequence[Any],
    iterations: int,
    contexts: Sequence[Any],
    evict: CacheEvictor | None = None,
) -> None:
    check = service.Check
    count = len(requests)
    calls = len(contexts)
    for i in range(iterations):
        if evict is not None:
            evict()
        await check(requests[i % count], contexts[i % calls])


async def measure(
    service: Any,
    gateway: Any,
    requests: Sequence[Any],
    iterations: int,
    contexts: Sequence[Any],
    evict: CacheEvictor | None = None,
) -> tuple[float, cProfile.Profile]:
    """Microseconds per check without a profiler, and a cProfile of the same loop."""
    await gateway.state.jwt.start()  # loads the issuer's keys, as the server does at start
    try:
        answer = await service.Check(requests[0], CONTEXT)
        if answer.status.code != 0:
            raise SystemExit(f"the benchmark request was not allowed:\n{answer}")
        # Warm up (fills the verified-token cache when it can hold every token), then time.
        await run_checks(service, requests, min(iterations, 5_000), contexts)
        started = time.process_time()  # the span exporter's thread counts too
        evicting = evict.seconds if evict is not None else 0.0
        await run_checks(service, requests, iterations, contexts, evict)
        spent = time.process_time() - started
        if evict is not None:
            spent -= evict.seconds - evicting
        per_check_us = spent / iterations * 1e6
        profiler = cProfile.Profile()
        profiler.enable()
        await run_checks(service, requests, iterations, contexts, evict)
        profiler.disable()
        return per_check_us, profiler
    finally:
        await gateway.state.jwt.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/profile_check.py",
        description="cProfile the Check path in-process (no gRPC, no Envoy).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--iterations", type=int, default=50_000)
    parser.add_argument("--tokens", type=int, default=1, help="distinct tokens to rotate")
    parser.add_argument("--top", type=int, default=20, help="functions to list")
    parser.add_argument("--trail", action="store_true", help="audit events, metrics and tracing on")
    parser.add_argument(
        "--sampling",
        type=float,
        metavar="PERCENT",
        help="with --trail: the share of checks whose parent is sampled (default 100)",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="a recording line per check (serve --record), written to /dev/null",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the CPU caches before each check, as a real server's neighbours do "
        "(closer to run.py's us/chk; the eviction's own time is not counted)",
    )
    args = parser.parse_args(argv)
    if args.sampling is not None and not args.trail:
        parser.error("--sampling needs --trail")

    with (
        tempfile.TemporaryDirectory(prefix="policy-profile-") as tmp,
        otlp_sink(args.trail) as port,
    ):
        service, gateway, requests = build_requests(Path(tmp), max(1, args.tokens), port)
        if args.record:
            from policy_service.telemetry.audit import FileSink
            from policy_service.telemetry.recording import Recorder

            service.trail.recorder = Recorder(FileSink.open(Path("/dev/null")), "/dev/null")
        contexts = call_contexts(
            (100.0 if args.sampling is None else args.sampling) if args.trail else None
        )
        per_check_us, profiler = asyncio.run(
            measure(
                service,
                gateway,
                requests,
                args.iterations,
                contexts,
                CacheEvictor() if args.cold else None,
            )
        )
        service.trail.close()  # exports what is queued, inside the profiled process's life
    trail = (
        f", trail on at {args.sampling if args.sampling is not None else 100:g}% sampled"
        if args.trail
        else ""
    )
    caches = ", caches evicted before each" if args.cold else ""
    trail += ", recorded" if args.record else ""
    print(
        f"{args.iterations} checks{caches}, {args.tokens} token(s){trail}: "
        f"{per_check_us:.1f} us CPU "
        f"per check ({1e6 / per_check_us:,.0f} checks/s on one core, no gRPC)"
    )

    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\ntop {args.top} by own time (share of {total:.2f}s profiled):")
    print(f"{'own %':>7} {'cum %':>7} {'calls':>9}  function")
    rows = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][2],
        reverse=True,
    )
    for (filename, line, name), (_, calls, own, cumulative, _) in rows[: args.top]:
        print(
            f"{100 * own / total:6.1f}% {100 * cumulative / total:6.1f}% {calls:>9}  "
            f"{name} ({_short(filename)}:{line})"
        )
    return 0


@contextlib.contextmanager
def otlp_sink(wanted: bool) -> Iterator[int | None]:
    """``bench/otlp_sink.py`` in its own process, so exporting costs what it costs."""
    if not wanted:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = subprocess.Popen([sys.executable, str(BENCH_DIR / "otlp_sink.py"), str(port)])
    try:
        time.sleep(1.0)  # grpc's server starts well within this
        yield port
    finally:
        sink.terminate()
        sink.wait(timeout=10)


def _short(filename: str) -> str:
    for marker in ("policy_service/", "site-packages/", "lib/python3"):
        index = filename.find(marker)
        if index >= 0:
            return filename[index:]
    return filename


if __name__ == "__main__":
    sys.exit(main())
