"""Exactly one audit event per decision, under concurrency, through the real gRPC server.

Many gRPC clients check at once (allowed, refused, unauthenticated, malformed); the audit
file must then hold one complete JSON line per answer, with the answer's decision id, and
the /metrics endpoint (scraped over HTTP) must count the same checks. Two ``serve``
processes appending to one audit file must not tear or lose a line.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import grpc
import httpx
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from policy_service.app import build_servicer
from policy_service.gen.policy_service.audit.v1 import audit_pb2
from policy_service.pipeline import CheckPipeline
from policy_service.server import PolicyServer, ServerSettings
from policy_service.state import BundleState
from policy_service.telemetry.audit import AuditFailureMode, Auditor, FileSink
from policy_service.telemetry.metrics import CheckMetrics
from policy_service.telemetry.trail import Trail
from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.checks import check_request, header_dict
from tests.support.envoy import free_port
from tests.support.serve import serve_command, serving

CLIENTS = 8
CHECKS_PER_CLIENT = 60


def requests(bundle: TestBundle) -> list[tuple[str, external_auth_pb2.CheckRequest]]:
    """One of each kind of decision, with the reason each must be audited under."""
    token = bundle.token("fininfo:read")

    def mcp(tool: str, authorization: str | None = f"Bearer {token}") -> dict[str, str]:
        headers = {"content-type": "application/json", "mcp-protocol-version": "2025-06-18"}
        if authorization:
            headers["authorization"] = authorization
        return headers

    def call(tool: str) -> dict[str, object]:
        return {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": tool}}

    return [
        ("allowed", check_request(headers=mcp("get_quote"), body=call("get_quote"))),
        ("insufficient_scope", check_request(headers=mcp("x"), body=call("place_trade"))),
        ("missing_credential", check_request(headers=mcp("x", None), body=call("get_quote"))),
        ("invalid_json", check_request(headers=mcp("x"), body=b"{")),
    ]


def decision_id_of(response: external_auth_pb2.CheckResponse) -> str:
    if response.HasField("ok_response"):
        return header_dict(response.ok_response.response_headers_to_add)["x-decision-id"]
    return header_dict(response.denied_response.headers)["x-decision-id"]


async def run_clients(
    ports: list[int], bundle: TestBundle, checks_per_client: int
) -> dict[str, str]:
    """decision id -> the reason the request was sent to provoke."""
    kinds = requests(bundle)
    answered: dict[str, str] = {}
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    try:
        stubs = [external_auth_pb2_grpc.AuthorizationStub(channel) for channel in channels]

        async def client(index: int) -> None:
            stub = stubs[index % len(stubs)]
            for turn in range(checks_per_client):
                reason, request = kinds[(index + turn) % len(kinds)]
                response = await stub.Check(request, timeout=10)
                answered[decision_id_of(response)] = reason

        await asyncio.gather(*(client(index) for index in range(CLIENTS)))
    finally:
        for channel in channels:
            await channel.close(grace=None)
    return answered


def read_events(path: Path) -> list[dict[str, object]]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file must end with a complete line"
    events = [json.loads(line) for line in lines[:-1]]
    for event in events:
        json_format.ParseDict(event, audit_pb2.AuditEvent())
    return events


async def scrape(port: int) -> Counter[str]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    counted: Counter[str] = Counter()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "policy_service_checks_total":
                counted[sample.labels["reason"]] += int(sample.value)
    return counted


async def test_concurrent_checks_each_leave_exactly_one_event(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    audit_log = tmp_path / "audit.jsonl"
    trail = Trail(
        auditor=Auditor(FileSink.open(audit_log), AuditFailureMode.CLOSED),
        metrics=CheckMetrics(),
    )
    gateway = CheckPipeline(BundleState.from_bundle(bundle.bundle))
    server = PolicyServer(
        build_servicer(gateway, trail),
        ServerSettings(listen=("127.0.0.1:0",), metrics_listen=("127.0.0.1", 0)),
    )
    await server.start()
    try:
        answered = await run_clients(server.ports, bundle, CHECKS_PER_CLIENT)
        assert server.metrics_server is not None
        counted = await scrape(server.metrics_server.port)
    finally:
        await server.stop()

    events = read_events(audit_log)
    assert len(answered) == CLIENTS * CHECKS_PER_CLIENT  # every id distinct
    assert len(events) == len(answered)
    assert {str(event["decision_id"]): event["reason"] for event in events} == answered
    assert counted == Counter(answered.values())


async def test_two_processes_share_one_audit_file_without_tearing_a_line(
    tmp_path: Path,
) -> None:
    bundle = write_test_bundle(tmp_path)
    audit_log = tmp_path / "audit.jsonl"
    ports = [free_port() for _ in range(2)]
    metrics_ports = [free_port() for _ in range(2)]
    commands = [
        (
            port,
            serve_command(
                bundle.path,
                port,
                "--audit-log",
                str(audit_log),
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
            ),
        )
        for port, metrics_port in zip(ports, metrics_ports, strict=True)
    ]
    with serving(commands, tmp_path):
        answered = await run_clients(ports, bundle, CHECKS_PER_CLIENT // 2)
        counted = [await scrape(port) for port in metrics_ports]

    events = read_events(audit_log)
    assert len(events) == len(answered) == CLIENTS * CHECKS_PER_CLIENT // 2
    assert {str(event["decision_id"]): event["reason"] for event in events} == answered
    assert counted[0] + counted[1] == Counter(answered.values())
    assert all(counted)  # both processes decided some of them
