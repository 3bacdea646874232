"""What the response side costs: a plain call, a filtered list and a redacted call, side by side.

    .venv/bin/python bench/answers.py [--duration 10] [--connections 16] [--repeat 1]

Four rows in one run, each through a real Envoy (rendered by the project's own renderer)
and one real ``policy-service serve`` process, with the upstream a canned Envoy answer so
only the gateway's own work shows:

    call/alone   tools/call, the gateway without the response side (ext_authz alone)
    call         tools/call, the response side on: the check marks nothing, so no ext_proc
                 stream opens (the row shows the streams Envoy opened per request: 0)
    list         tools/list of 20 tools, filtered for a caller who may use 2 of them
    redacted     tools/call whose result holds an AWS key and a JWT, on an upstream that
                 redacts: both replaced before the client sees them

For each: requests per second, p50 and p99, the service's and Envoy's CPU per request, the
ext_proc streams Envoy opened per request, and the ratio of req/s to ``call/alone``. Each
row's answer is checked once before it is measured (a list that is not filtered, or a
secret that is not redacted, stops the run). Needs wrk (see bench/run.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import run  # bench/run.py, beside this script: wrk, CPU meters, the service process

sys.path.insert(0, str(run.REPO_ROOT))  # tests.support is not an installed package

from policy_service.gateway.bootstrap import render_envoy_config
from policy_service.gateway.layout import AuthzEndpoint, EnvoyLayout, UpstreamRoute

FAKE_AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
FAKE_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaC11c2VyIn0.c2lnbmF0dXJlLW5vdC1yZWFsLWF0LWFsbA"
VISIBLE = ("get_quote", "list_symbols")


def _tool(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"The demo tool {name}: a realistic one-line description of what it does.",
        "inputSchema": {
            "type": "object",
            "properties": {"symbol": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["symbol"],
        },
    }


LIST_ANSWER = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "tools": [_tool(name) for name in (*VISIBLE, *(f"internal_{i}" for i in range(18)))]
        },
    }
)
CALL_ANSWER = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "content": [{"type": "text", "text": '{"symbol": "ACME", "price": 575.1}'}],
            "structuredContent": {"symbol": "ACME", "price": 575.1},
        },
    }
)
SECRET_ANSWER = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "content": [
                {
                    "type": "text",
                    "text": f"account notes: key {FAKE_AWS_KEY}, session {FAKE_JWT}, price 575.1",
                }
            ],
            "structuredContent": {"notes": f"aws {FAKE_AWS_KEY}"},
        },
    }
)
CALL_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_quote", "arguments": {"symbol": "ACME"}},
    }
)
LIST_BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})


@dataclass(frozen=True)
class Row:
    name: str
    body: str  # the request
    answer: str  # the canned upstream answer
    redact: bool  # the upstream redacts tool results
    response_side: bool = True


ROWS = (
    Row("call/alone", CALL_BODY, CALL_ANSWER, redact=False, response_side=False),
    Row("call", CALL_BODY, CALL_ANSWER, redact=False),
    Row("list", LIST_BODY, LIST_ANSWER, redact=False),
    Row("redacted", CALL_BODY, SECRET_ANSWER, redact=True),
)


def _fixture(workdir: Path, row: Row, tokens: int) -> run.Fixture:
    from tests.support.bundles import FININFO_RESOURCE, ISSUER, write_test_bundle

    workdir.mkdir(parents=True, exist_ok=True)
    bundle = write_test_bundle(
        workdir, fininfo_responses="      redact: {}\n" if row.redact else ""
    )
    minted = [bundle.token(run.TOOL_SCOPE, lifetime=3600) for _ in range(tokens)]
    (workdir / "tokens.txt").write_text("\n".join(minted) + "\n")
    (workdir / "body.json").write_text(row.body)
    method = json.loads(row.body)["method"]
    headers = [*run.REQUEST_HEADERS, ("Mcp-Method", method)]
    (workdir / "headers.txt").write_text("".join(f"{n}: {v}\n" for n, v in headers))
    return run.Fixture(
        workdir=workdir,
        bundle_path=bundle.path,
        jwks_json=json.dumps(bundle.key.jwks()),
        issuer=ISSUER,
        audience=FININFO_RESOURCE,
        token=minted[0],
        unscoped_token=bundle.token("fininfo:other", lifetime=3600),
        tokens_file=workdir / "tokens.txt",
        body_file=workdir / "body.json",
        headers_file=workdir / "headers.txt",
    )


@contextlib.contextmanager
def _gateway(row: Row, fixture: run.Fixture, args: argparse.Namespace) -> Iterator[Any]:
    service = run.ServiceProcess(fixture, run._free_port(), "WARNING", 0)
    try:
        service.wait_ready()
        port = run._free_port()
        layout = EnvoyLayout(
            upstreams=(
                UpstreamRoute(
                    "fininfo",
                    "/fininfo/",
                    "127.0.0.1",
                    0,
                    direct_response_body=row.answer,
                    direct_response_content_type="application/json",
                ),
            ),
            authz=(AuthzEndpoint("127.0.0.1", service.port),),
            plain_port=port,
            tls_port=None,
            admin_port=0,
            access_log=False,
            response_side=row.response_side,
        )
        with run.running_envoy(render_envoy_config(layout), args.envoy_concurrency) as (
            envoy,
            pids,
        ):
            target = run.Target(port, envoy, pids, [service.pid], serving_pids=[service.pid])
            yield target, service
    finally:
        service.stop()


def _probe(row: Row, fixture: run.Fixture, port: int) -> None:
    """The row's answer, once, as the client gets it: filtered, redacted or untouched."""
    headers = dict(line.split(": ", 1) for line in fixture.headers_file.read_text().splitlines())
    headers["Authorization"] = f"Bearer {fixture.token}"
    answer = httpx.post(
        f"http://127.0.0.1:{port}{run.REQUEST_PATH}",
        content=row.body,
        headers=headers,
        timeout=10,
    )
    if answer.status_code != 200:
        raise run.BenchError(f"{row.name}: HTTP {answer.status_code}: {answer.text[:300]}")
    text = answer.text
    if row.name == "list":
        names = [tool["name"] for tool in answer.json()["result"]["tools"]]
        if tuple(names) != VISIBLE:
            raise run.BenchError(f"list: the caller was shown {names}")
    elif row.redact:
        if FAKE_AWS_KEY in text or FAKE_JWT in text or "[redacted:aws_access_key]" not in text:
            raise run.BenchError("redacted: the secrets reached the client")
    elif text != row.answer:
        raise run.BenchError(f"{row.name}: the answer was changed")


def _streams(envoy: Any) -> int:
    text = envoy.admin_get("/stats?filter=ext_proc")
    return sum(
        int(value) for value in re.findall(r"ext_proc\.answers\.streams_started: ([0-9]+)", text)
    )


@dataclass
class Result:
    row: str
    rps: float
    p50_ms: float
    p99_ms: float
    service_us: float | None
    envoy_us: float | None
    streams_per_request: float
    problems: list[str]


def _measure(row: Row, args: argparse.Namespace, wrk: str, workdir: Path) -> Result:
    fixture = _fixture(workdir / row.name.replace("/", "-"), row, args.tokens)
    with _gateway(row, fixture, args) as (target, _service):
        _probe(row, fixture, target.port)
        run.run_wrk(wrk, args, fixture, target.port, args.warmup)
        streams_before = _streams(target.envoy)
        with run.CpuMeter({"envoy": target.envoy_pids, "service": target.service_pids}) as cpu:
            output = run.run_wrk(wrk, args, fixture, target.port, args.duration)
        streams = _streams(target.envoy) - streams_before
    parsed = run.parse_wrk_output(output)
    problems = []
    if parsed.failed:
        problems.append(f"{parsed.failed} requests failed")

    def per_request(group: str) -> float | None:
        seconds = cpu.seconds.get(group)
        return None if seconds is None else round(1e6 * seconds / parsed.requests, 1)

    return Result(
        row.name,
        parsed.requests_per_second,
        parsed.latency_ms["50"],
        parsed.latency_ms["99"],
        per_request("service"),
        per_request("envoy"),
        streams / parsed.requests,
        problems,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per row")
    parser.add_argument("--warmup", type=int, default=3, help="seconds before each row")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--envoy-concurrency", type=int, default=1)
    parser.add_argument("--rows", default=",".join(r.name for r in ROWS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--wrk", default=None)
    args = parser.parse_args()
    wrk = run.find_wrk(args.wrk)
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-answers-"))
    chosen = [row for row in ROWS if row.name in args.rows.split(",")]
    results = [_measure(row, args, wrk, workdir) for row in chosen]
    base = next((r.rps for r in results if r.row == "call/alone"), None)
    print()
    print(
        "| row | req/s | p50 ms | p99 ms | service µs/req | Envoy µs/req | ext_proc streams/req "
        "| X/call-alone |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        ratio = f"{result.rps / base:.2f}" if base else "-"
        print(
            f"| {result.row} | {result.rps:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} "
            f"| {result.service_us} | {result.envoy_us} | {result.streams_per_request:.2f} "
            f"| {ratio} |"
        )
        for problem in result.problems:
            print(f"  {result.row}: INVALID: {problem}")
    return 1 if any(result.problems for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
