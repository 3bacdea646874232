"""`policy-service dev` as a user runs it: one command, a token, a working client, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.envoy import free_port
from tests.support.peers import GatewayDenied, a2a_send_message, mcp_call_tool, tool_text

pytestmark = pytest.mark.e2e


@dataclass
class RunningDev:
    process: subprocess.Popen[str]
    state_dir: Path
    url: str
    output: list[str]

    def token(self, upstream: str, *scopes: str) -> str:
        args = [
            sys.executable,
            "-m",
            "policy_service",
            "token",
            "--state-dir",
            str(self.state_dir),
            "--upstream",
            upstream,
        ]
        for scope in scopes:
            args += ["--scope", scope]
        return subprocess.run(
            args, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()


def start_dev(state_dir: Path, *flags: str) -> RunningDev:
    """`policy-service dev` on free ports, once it says the gateway is up."""
    http = free_port()
    command = [
        sys.executable,
        "-m",
        "policy_service",
        "dev",
        "--state-dir",
        str(state_dir),
        "--http-port",
        str(http),
        "--https-port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
        "--authz-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--peer-ports",
        f"{free_port()},{free_port()},{free_port()}",
        *flags,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output: list[str] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 90
    for line in process.stdout:
        output.append(line)
        if "Press Ctrl-C to stop." in line or time.monotonic() > deadline:
            break
    if not any("The gateway is up." in line for line in output):
        process.kill()
        pytest.fail("policy-service dev did not come up:\n" + "".join(output))
    return RunningDev(process, state_dir, f"http://127.0.0.1:{http}", output)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDev]:
    running = start_dev(tmp_path_factory.mktemp("dev-state"))
    yield running
    if running.process.poll() is None:
        running.process.kill()


async def test_dev_stack_serves_tools_and_agent_with_minted_tokens(dev: RunningDev) -> None:
    banner = "".join(dev.output)
    assert "policy-service token" in banner
    assert f"{dev.url}/fininfo/mcp" in banner
    read = {"Authorization": f"Bearer {dev.token('fininfo', 'fininfo:read')}"}
    result = await mcp_call_tool(
        f"{dev.url}/fininfo/mcp", "get_quote", {"symbol": "ACME"}, headers=read
    )
    assert "ACME" in tool_text(result)
    with pytest.raises(GatewayDenied) as denied:
        await mcp_call_tool(
            f"{dev.url}/fininfo/mcp",
            "place_trade",
            {"symbol": "ACME", "side": "buy", "quantity": 1},
            headers=read,
        )
    assert denied.value.status == 403
    clock = {"Authorization": f"Bearer {dev.token('currenttime', 'time:read')}"}
    assert tool_text(
        await mcp_call_tool(f"{dev.url}/currenttime/mcp", "current_time", {}, headers=clock)
    )
    chat = {"Authorization": f"Bearer {dev.token('helper', 'agent:chat')}"}
    assert "hi" in await a2a_send_message(f"{dev.url}/agents/helper/", "hi", headers=chat)
    api_key = (dev.state_dir / "dev-api-key.txt").read_text().strip()
    keyed = await mcp_call_tool(
        f"{dev.url}/fininfo/mcp", "list_symbols", {}, headers={"x-api-key": api_key}
    )
    assert not keyed.is_error


def test_the_printed_curl_example_works(dev: RunningDev) -> None:
    banner = "".join(dev.output)
    start = banner.index("  curl -s ")
    end = banner.index("\n\n", start)
    command = banner[start:end]
    token = dev.token("fininfo", "fininfo:read")
    result = subprocess.run(
        ["bash", "-c", command],
        env={**os.environ, "TOKEN": token},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert '"symbol":"ACME"' in result.stdout, result.stdout + result.stderr
    assert '"isError":false' in result.stdout


def test_the_dev_stack_audits_every_decision_and_serves_metrics(dev: RunningDev) -> None:
    token = dev.token("fininfo", "fininfo:read")
    response = httpx.post(
        f"{dev.url}/fininfo/mcp",
        headers={"authorization": f"Bearer {token}", "mcp-protocol-version": "2025-06-18"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nope"}},
        timeout=15,
    )
    assert response.status_code == 403
    decision_id = response.headers["x-decision-id"]
    events = [
        json.loads(line) for line in (dev.state_dir / "audit.log").read_text().splitlines() if line
    ]
    [event] = [e for e in events if e["decision_id"] == decision_id]
    assert event["reason"] == "no_matching_rule"
    banner = "".join(dev.output)
    metrics_url = banner.split("Metrics", 1)[1].split()[0]
    scraped = httpx.get(metrics_url, timeout=10).text
    refused = [
        sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "policy_service_checks_total"
        and sample.labels["decision"] == "deny"
        and sample.labels["reason"] == "no_matching_rule"
    ]
    assert refused == [1.0]


def test_dev_stack_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # A stack of its own: stopping the shared one would leave the other tests nothing.
    dev = start_dev(tmp_path)
    try:
        dev.process.send_signal(signal.SIGINT)
        assert dev.process.wait(timeout=30) == 0
    finally:
        if dev.process.poll() is None:
            dev.process.kill()
    assert dev.process.stdout is not None
    assert "stopped." in dev.process.stdout.read()


async def test_dev_stack_with_two_workers_serves_and_stops_cleanly(tmp_path: Path) -> None:
    # serve --workers 2 as a child, its buckets in a redis-server the stack starts itself.
    dev = start_dev(tmp_path, "--workers", "2")
    try:
        banner = "".join(dev.output)
        assert "serve --workers 2: 2 processes" in banner
        assert "buckets in a redis-server the dev stack started" in banner
        read = {"Authorization": f"Bearer {dev.token('fininfo', 'fininfo:read')}"}
        for _ in range(3):
            result = await mcp_call_tool(
                f"{dev.url}/fininfo/mcp", "get_quote", {"symbol": "ACME"}, headers=read
            )
            assert "ACME" in tool_text(result)
        metrics_url = banner.split("Metrics", 1)[1].split()[0]
        async with httpx.AsyncClient(timeout=10) as client:
            scraped = (await client.get(metrics_url)).text
        alive = [
            sample.value
            for family in text_string_to_metric_families(scraped)
            for sample in family.samples
            if sample.name == "policy_service_workers_alive"
        ]
        assert alive == [2.0]
        limited = [
            sample.value
            for family in text_string_to_metric_families(scraped)
            for sample in family.samples
            if sample.name == "policy_service_redis_takes_total"
        ]
        assert sum(limited) >= 3  # every call took from the buckets in Redis
        dev.process.send_signal(signal.SIGINT)
        assert dev.process.wait(timeout=60) == 0
    finally:
        if dev.process.poll() is None:
            dev.process.kill()
    assert dev.process.stdout is not None
    rest = dev.process.stdout.read()
    assert "stopped." in rest
    assert "[worker 1/2] policy_service.server stopped" in "".join(dev.output) + rest
