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
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
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


def build_requests(workdir: Path, tokens: int) -> tuple[Any, Any, list[Any]]:
    """The servicer and gateway for a fresh test bundle, and one CheckRequest per token."""
    from policy_service.app import build_gateway, build_servicer, build_trail
    from tests.support.bundles import write_test_bundle
    from tests.support.checks import check_request

    bundle = write_test_bundle(workdir, limits=BENCH_LIMITS)
    # The service as it ships, built by the composition root: no spans (no OTEL_* here),
    # no audit sink, no metrics, so the profile shows the request path itself.
    trail = build_trail({})
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
    """The servicer reads only the call's metadata: what Envoy sends with an untraced check."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-envoy-internal", "true"),)


CONTEXT = EnvoyCallContext()


async def run_checks(service: Any, requests: Sequence[Any], iterations: int) -> None:
    check = service.Check
    count = len(requests)
    for i in range(iterations):
        await check(requests[i % count], CONTEXT)


async def measure(
    service: Any, gateway: Any, requests: Sequence[Any], iterations: int
) -> tuple[float, cProfile.Profile]:
    """Microseconds per check without a profiler, and a cProfile of the same loop."""
    await gateway.state.jwt.start()  # loads the issuer's keys, as the server does at start
    try:
        answer = await service.Check(requests[0], CONTEXT)
        if answer.status.code != 0:
            raise SystemExit(f"the benchmark request was not allowed:\n{answer}")
        # Warm up (fills the verified-token cache when it can hold every token), then time.
        await run_checks(service, requests, min(iterations, 5_000))
        started = time.perf_counter()
        await run_checks(service, requests, iterations)
        per_check_us = (time.perf_counter() - started) / iterations * 1e6
        profiler = cProfile.Profile()
        profiler.enable()
        await run_checks(service, requests, iterations)
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
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="policy-profile-") as tmp:
        service, gateway, requests = build_requests(Path(tmp), max(1, args.tokens))
        per_check_us, profiler = asyncio.run(measure(service, gateway, requests, args.iterations))
    print(
        f"{args.iterations} checks, {args.tokens} token(s): {per_check_us:.1f} us per check "
        f"({1e6 / per_check_us:,.0f} checks/s on one core, no gRPC)"
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


def _short(filename: str) -> str:
    for marker in ("policy_service/", "site-packages/", "lib/python3"):
        index = filename.find(marker)
        if index >= 0:
            return filename[index:]
    return filename


if __name__ == "__main__":
    sys.exit(main())
