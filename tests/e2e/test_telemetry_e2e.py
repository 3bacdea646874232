"""One trace from Envoy through the policy service to Redis; audit events; /metrics scraped.

Real parts only: Envoy (OpenTelemetry tracer) and the service export to one OTLP receiver,
buckets live in a real redis-server, the client is the real MCP SDK, and the audit log is
a real file. An SRE's path is the one tested: from a denied answer's decision id to the
audit event, the Envoy access-log line and the trace.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policy_service.dev.redis_server import RedisServer
from policy_service.telemetry.tracing import ANSWER_SPAN_NAME, CHECK_SPAN_NAME
from tests.e2e.conftest import Stack, start_stack
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.peers import (
    GatewayDenied,
    fetch_recorded_requests,
    mcp_call_tool,
    mcp_list_tools,
)

pytestmark = pytest.mark.e2e

LIMITS = """\
  - name: per-client
    rate: 1000/min
    key: [client]
    match: {upstreams: [fininfo]}
"""
EGRESS = "async envoy.service.auth.v3.Authorization.Check egress"
_clients = itertools.count()


@dataclass
class Traced:
    stack: Stack
    otlp: OtlpReceiver
    audit_log: Path

    def audit_events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def client(self, *scopes: str) -> dict[str, str]:
        return self.named_client(*scopes)[1]

    def named_client(self, *scopes: str) -> tuple[str, dict[str, str]]:
        """A new client id (its own buckets, its own spans) and its bearer header."""
        client_id = f"traced-agent-{next(_clients)}"
        headers = self.stack.bearer(*scopes, audience=self.stack.fininfo_url, client_id=client_id)
        return client_id, headers


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    tmp = tmp_path_factory.mktemp("traced")
    audit_log = tmp / "audit.jsonl"
    with RedisServer() as redis_server, OtlpReceiver() as otlp:
        for stack in start_stack(
            tmp,
            limits=LIMITS,
            redis_url=redis_server.url,
            otlp=otlp,
            audit_log=audit_log,
            metrics=True,
        ):
            yield Traced(stack, otlp, audit_log)


def check_span_for(spans: list[ReceivedSpan], **attributes: object) -> ReceivedSpan | None:
    for span in spans:
        if span.name == CHECK_SPAN_NAME and all(
            span.attributes.get(key) == value for key, value in attributes.items()
        ):
            return span
    return None


def whole_trace(
    otlp: OtlpReceiver, children: set[str], **attributes: object
) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """Wait for the Check span with these attributes, Envoy's two spans of its trace and
    the ``children`` spans under it."""

    def complete(spans: list[ReceivedSpan]) -> bool:
        check = check_span_for(spans, **attributes)
        if check is None:
            return False
        names = {span.name for span in spans if span.trace_id == check.trace_id}
        return {"ingress", EGRESS, *children} <= names

    spans = otlp.wait_for(complete)
    check = check_span_for(spans, **attributes)
    assert check is not None
    return check, [span for span in spans if span.trace_id == check.trace_id]


async def access_log_line(stack: Stack, decision_id: str) -> dict[str, object]:
    """Envoy's access-log entry for a decision (Envoy flushes its log about once a second)."""
    for _ in range(100):
        lines = [json.loads(line) for line in stack.envoy.stdout.splitlines() if line]
        found = [entry for entry in lines if entry.get("decision_id") == decision_id]
        if found:
            [entry] = found
            return entry
        await asyncio.sleep(0.1)
    raise AssertionError(f"no access-log line with decision_id {decision_id}")


def only(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


async def test_one_trace_runs_from_envoy_through_the_check_to_redis(traced: Traced) -> None:
    client_id, headers = traced.named_client("fininfo:read")
    result = await mcp_call_tool(
        traced.stack.fininfo_url, "get_quote", {"symbol": "ACME"}, headers=headers
    )
    assert not result.is_error

    # This client's call, not another test's get_quote: the receiver keeps every span.
    check, trace = whole_trace(
        traced.otlp,
        {"EVALSHA"},
        **{"gen_ai.tool.name": "get_quote", "policy_service.client_id": client_id},
    )
    ingress = only(trace, "ingress")
    egress = only(trace, EGRESS)
    assert ingress.service_name == "envoy"
    assert ingress.kind == "SERVER"
    assert egress.service_name == "envoy"
    assert egress.kind == "CLIENT"
    assert egress.parent_span_id == ingress.span_id
    # Our span continues Envoy's: its parent is the ext_authz call span.
    assert check.service_name == "policy-service"
    assert check.kind == "SERVER"
    assert check.parent_span_id == egress.span_id
    # One span per check: its phases are its events; the Redis round trip is its child.
    assert list(check.events) == ["identity", "policy", "rate_limit"]
    assert check.attributes["policy_service.ratelimit.verdict"] == "admitted"
    assert float(check.events["rate_limit"]["policy_service.phase.duration_ms"]) >= 0
    ours = [span.name for span in trace if span.service_name == "policy-service"]
    assert sorted(ours) == sorted([CHECK_SPAN_NAME, "EVALSHA"])
    redis_call = only(trace, "EVALSHA")
    assert redis_call.kind == "CLIENT"
    assert redis_call.parent_span_id == check.span_id
    assert redis_call.attributes["db.system.name"] == "redis"
    assert redis_call.attributes["server.address"] == "127.0.0.1"

    attributes = check.attributes
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["mcp.protocol.version"] == "2026-07-28"
    assert isinstance(attributes["jsonrpc.request.id"], str)
    assert attributes["policy_service.decision"] == "allow"
    assert attributes["policy_service.rule"] == "read"
    assert attributes["policy_service.bundle.revision"] == "test-1"
    # The SDK's handshake calls take from the same per-client bucket first.
    remaining = attributes["policy_service.ratelimit.remaining"]
    assert isinstance(remaining, int)
    assert 990 <= remaining <= 998


async def test_a_filtered_list_answer_has_its_own_span_in_the_same_trace(traced: Traced) -> None:
    client_id, headers = traced.named_client("fininfo:read")
    tools = await mcp_list_tools(traced.stack.fininfo_url, headers=headers)
    assert "place_trade" not in {tool.name for tool in tools}

    def complete(spans: list[ReceivedSpan]) -> bool:
        check = check_span_for(
            spans, **{"mcp.method.name": "tools/list", "policy_service.client_id": client_id}
        )
        return check is not None and any(
            span.name == ANSWER_SPAN_NAME and span.trace_id == check.trace_id for span in spans
        )

    spans = traced.otlp.wait_for(complete)
    check = check_span_for(
        spans, **{"mcp.method.name": "tools/list", "policy_service.client_id": client_id}
    )
    assert check is not None
    trace = [span for span in spans if span.trace_id == check.trace_id]
    answer = only(trace, ANSWER_SPAN_NAME)
    assert answer.service_name == "policy-service"
    assert answer.kind == "SERVER"
    # It continues Envoy's ext_proc call, as the Check span continues its ext_authz call.
    (parent,) = [span for span in trace if span.span_id == answer.parent_span_id]
    assert parent.service_name == "envoy"
    assert parent.span_id != only(trace, EGRESS).span_id
    assert (
        answer.attributes["policy_service.decision_id"]
        == check.attributes["policy_service.decision_id"]
    )
    assert answer.attributes["policy_service.answer.outcome"] == "rewritten"
    hidden = answer.attributes["policy_service.answer.items_hidden"]
    assert isinstance(hidden, int)
    assert hidden >= 1


async def test_a_denial_leads_from_its_decision_id_to_the_audit_log_access_log_and_trace(
    traced: Traced,
) -> None:
    headers = traced.client("fininfo:read")
    with pytest.raises(GatewayDenied) as denied:
        await mcp_call_tool(traced.stack.fininfo_url, "place_trade", {"qty": 1}, headers=headers)
    assert denied.value.status == 403
    decision_id = denied.value.headers["x-decision-id"]
    assert len(decision_id) == 32

    [event] = [e for e in traced.audit_events() if e["decision_id"] == decision_id]
    assert event["decision"] == "deny"
    assert event["reason"] == "insufficient_scope"
    assert event["rules"] == ["trade"]
    assert event["http_status"] == 403

    check, _ = whole_trace(traced.otlp, set(), **{"policy_service.decision_id": decision_id})
    assert list(check.events) == ["identity", "policy"]  # refused before the limits
    assert event["trace_id"] == check.trace_id
    assert event["span_id"] == check.span_id
    assert check.attributes["policy_service.reason"] == "insufficient_scope"
    assert check.events["policy"]["policy_service.reason"] == "insufficient_scope"
    assert check.attributes["policy_service.missing_scopes"] == ["fininfo:trade"]

    line = await access_log_line(traced.stack, decision_id)
    assert line["status"] == 403
    assert line["trace_id"] == check.trace_id


async def test_the_upstream_and_the_client_see_the_decision_id_of_an_allowed_call(
    traced: Traced,
) -> None:
    token = traced.stack.bundle.token(
        "fininfo:read", audience=traced.stack.fininfo_url, client_id="plain-http-agent"
    )
    body = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {
            "name": "get_quote",
            "arguments": {"symbol": "ACME"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    async with httpx.AsyncClient(timeout=15) as http:
        response = await http.post(
            traced.stack.fininfo_url,
            json=body,
            headers={
                "authorization": f"Bearer {token}",
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
                "mcp-name": "get_quote",
            },
        )
    assert response.status_code == 200, response.text
    decision_id = response.headers["x-decision-id"]
    recorded = await fetch_recorded_requests(traced.stack.peers.fininfo.base_url, limit=5)
    seen = [entry["headers"].get("x-gateway-decision-id") for entry in recorded]
    assert decision_id in seen
    [event] = [e for e in traced.audit_events() if e["decision_id"] == decision_id]
    assert event["decision"] == "allow"


async def test_metrics_are_scraped_and_agree_with_the_audit_log(traced: Traced) -> None:
    headers = traced.client("fininfo:read")
    await mcp_call_tool(traced.stack.fininfo_url, "get_quote", {"symbol": "X"}, headers=headers)
    metrics_server = traced.stack.server.metrics_server
    assert metrics_server is not None
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"http://127.0.0.1:{metrics_server.port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}

    checks: dict[tuple[str, str], float] = {}
    for sample in families["policy_service_checks"].samples:
        if sample.name.endswith("_total"):
            key = (sample.labels["decision"], sample.labels["reason"])
            checks[key] = checks.get(key, 0) + sample.value
    audited: dict[tuple[str, str], float] = {}
    answered: dict[str, float] = {}
    for event in traced.audit_events():
        if event["decision"] == "answer":  # the response side's event about an answer
            answered[str(event["reason"])] = answered.get(str(event["reason"]), 0) + 1
            continue
        key = (str(event["decision"]), str(event["reason"]))
        audited[key] = audited.get(key, 0) + 1
    assert checks == audited
    answers: dict[str, float] = {}
    for sample in families["policy_service_answers"].samples:
        if sample.name.endswith("_total"):
            outcome = sample.labels["outcome"]
            answers[outcome] = answers.get(outcome, 0) + sample.value
    assert answers == answered
    assert checks[("allow", "allowed")] >= 1

    def value(family: str, sample_name: str, **labels: str) -> float:
        for sample in families[family].samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return sample.value
        raise AssertionError(f"no {sample_name} sample with {labels}")

    total_audited = sum(audited.values()) + sum(answered.values())
    assert (
        value("policy_service_audit_events", "policy_service_audit_events_total", result="written")
        == total_audited
    )
    duration = "policy_service_check_duration_seconds"
    assert value(duration, f"{duration}_count", decision="allow") == checks[("allow", "allowed")]
    assert value("policy_service_redis_takes", "policy_service_redis_takes_total") >= 1
    info = "policy_service_bundle_info"
    assert value(info, info, revision="test-1") == 1
