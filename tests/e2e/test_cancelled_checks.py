"""Checks Envoy abandons at its ext_authz timeout are still recorded.

Redis is paused for real (SIGSTOP) while the service waits on it longer than Envoy waits
for the service, so Envoy cancels the gRPC calls. Every check the service received must
leave an audit event, a count and a log line: checks recorded equal checks received.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import pytest

from policy_service.dev.redis_server import RedisServer
from tests.e2e.conftest import Stack, start_stack

LIMITS = """\
  - name: per-client
    rate: 1000/min
    key: [client]
    match: {upstreams: [fininfo], tools: ["*"]}
"""
ABANDONED = 5


def call(stack: Stack, token: str) -> tuple[dict[str, str], str]:
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "get_quote",
    }
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_quote", "arguments": {"symbol": "ACME"}, "_meta": meta},
    }
    return headers, json.dumps(body)


def audit_events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_checks_envoy_abandons_are_audited_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit_log = tmp_path / "audit.jsonl"
    caplog.set_level(logging.WARNING, logger="policy_service.server")
    with RedisServer() as redis_server:
        for stack in start_stack(
            tmp_path,
            limits=LIMITS,
            redis_url=redis_server.url,
            audit_log=audit_log,
            metrics=True,
            redis_timeout=5.0,  # the service would wait for Redis far longer than Envoy
            authz_timeout_seconds=0.3,
        ):
            headers, body = call(
                stack, stack.bundle.token("fininfo:read", audience=stack.fininfo_url)
            )
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                first = await client.post(stack.fininfo_url, content=body, headers=headers)
                assert first.status_code == 200, first.text

                redis_server.pause()
                try:
                    started = time.monotonic()
                    answers = await asyncio.gather(
                        *(
                            client.post(stack.fininfo_url, content=body, headers=headers)
                            for _ in range(ABANDONED)
                        )
                    )
                    waited = time.monotonic() - started
                finally:
                    redis_server.resume()
                # Envoy answered each on its own timeout, fail closed (status_on_error).
                assert [answer.status_code for answer in answers] == [503] * ABANDONED
                assert waited < 3.0

                # Every check the service received has its event: none was lost.
                for _ in range(100):
                    events = audit_events(audit_log)
                    if len(events) >= 1 + ABANDONED:
                        break
                    await asyncio.sleep(0.05)
                cancelled = [e for e in events if e["reason"] == "cancelled"]
                assert len(events) == 1 + ABANDONED
                assert len(cancelled) == ABANDONED
                assert all(e["decision"] == "deny" for e in cancelled)
                assert all(e["caller"]["subject"] for e in cancelled)  # who, still known

                metrics = stack.server.trail.metrics
                assert metrics is not None
                counted = sum(
                    sample.value
                    for family in metrics.registry.collect()
                    if family.name == "policy_service_checks"
                    for sample in family.samples
                    if sample.name.endswith("_total") and sample.labels["reason"] == "cancelled"
                )
                assert counted == ABANDONED

                # And it is said, once, not once per check.
                said = [r for r in caplog.records if "abandoned by Envoy" in r.getMessage()]
                assert len(said) == 1
