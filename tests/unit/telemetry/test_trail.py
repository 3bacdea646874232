"""The trail of a check through the real servicer: spans, audit events, metrics, decision id.

The servicer is called in process with a stand-in gRPC context (only its invocation
metadata is read), so these tests see exactly what the gRPC server does per check.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import INVALID_SPAN, SpanKind, StatusCode, format_span_id, format_trace_id

from policy_service.app import build_gateway, build_servicer
from policy_service.gen.policy_service.audit.v1 import audit_pb2
from policy_service.request.model import HttpRequest
from policy_service.telemetry.audit import AuditFailureMode, Auditor
from policy_service.telemetry.facts import session_reference
from policy_service.telemetry.metrics import CheckMetrics
from policy_service.telemetry.record import CheckRecord
from policy_service.telemetry.tracing import CHECK_SPAN_NAME
from policy_service.telemetry.trail import Trail
from policy_service.testing import MemoryAuditSink, ServicerContext, capture_spans, tool_call_body
from tests.support.bundles import CI_BOT_KEY, TestBundle, write_test_bundle
from tests.support.checks import check_request, header_dict

ENVOY_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVOY_SPAN = "00f067aa0ba902b7"
CLIENT_TRACE = "11111111111111111111111111111111"
CLIENT_SPAN = "2222222222222222"
AGENT_TRACE = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
AGENT_SPAN = "bbbbbbbbbbbbbbbb"
V2026 = "2026-07-28"
LIMITS = """\
  - name: per-client
    rate: 100/min
    key: [client]
    match: {upstreams: [fininfo], tools: ["*"]}
"""


class Harness:
    def __init__(
        self,
        bundle: TestBundle,
        *,
        spans: bool = True,
        sink: MemoryAuditSink | None = None,
        failure: AuditFailureMode = AuditFailureMode.CLOSED,
        exporter_processor: BatchSpanProcessor | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        self.bundle = bundle
        self.exporter: InMemorySpanExporter | None = None
        provider = None
        if spans:
            provider, self.exporter = capture_spans(sampler)
        if exporter_processor is not None:
            assert provider is not None
            provider.add_span_processor(exporter_processor)
        self.sink = sink if sink is not None else MemoryAuditSink()
        self.metrics = CheckMetrics()
        self.trail = Trail(
            tracer_provider=provider,
            auditor=Auditor(self.sink, failure),
            metrics=self.metrics,
        )
        self.gateway = build_gateway(bundle.bundle, self.trail)
        self.service = build_servicer(self.gateway, self.trail)
        self._started = False

    async def check(
        self, metadata: Sequence[tuple[str, str]] = (), **request: Any
    ) -> external_auth_pb2.CheckResponse:
        if not self._started:  # loads the bundle's key file, as the server's start does
            await self.gateway.state.jwt.start()
            self._started = True
        return await self.service.Check(check_request(**request), ServicerContext(metadata))

    def spans(self) -> list[ReadableSpan]:
        assert self.exporter is not None
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [span for span in self.spans() if span.name == name]
        assert len(found) == 1, [span.name for span in self.spans()]
        return found[0]

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def bundle(tmp_path: Path) -> TestBundle:
    return write_test_bundle(tmp_path, limits=LIMITS)


def traceparent(trace_id: str, span_id: str, flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


def tool_call(
    tool: str = "get_quote", *, request_id: int = 7, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    return tool_call_body(tool, request_id, arguments={"symbol": "ACME"}, meta=meta)


def mcp_headers(token: str, tool: str = "get_quote", **extra: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "mcp-protocol-version": V2026,
        "mcp-method": "tools/call",
        "mcp-name": tool,
        "mcp-session-id": "session-1",
        **extra,
    }


def decision_id_of(response: external_auth_pb2.CheckResponse) -> str:
    if response.HasField("ok_response"):
        headers = header_dict(response.ok_response.response_headers_to_add)
    else:
        headers = header_dict(response.denied_response.headers)
    return headers["x-decision-id"]


# -- spans ---------------------------------------------------------------------------


async def test_one_span_continues_envoys_trace_with_an_event_per_phase(
    bundle: TestBundle,
) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    response = await harness.check(
        metadata=[("traceparent", traceparent(ENVOY_TRACE, ENVOY_SPAN))],
        headers=mcp_headers(token),
        body=tool_call(),
    )
    assert response.HasField("ok_response")

    check = harness.span(CHECK_SPAN_NAME)
    assert check.kind is SpanKind.SERVER
    assert format_trace_id(check.context.trace_id) == ENVOY_TRACE
    assert check.parent is not None
    assert format_span_id(check.parent.span_id) == ENVOY_SPAN
    assert [span.name for span in harness.spans()] == [CHECK_SPAN_NAME]  # no child spans
    events = {event.name: dict(event.attributes or {}) for event in check.events}
    assert list(events) == ["identity", "policy", "rate_limit"]
    for phase, attributes in events.items():
        assert 0 <= float(attributes["policy_service.phase.duration_ms"]) < 10_000, phase

    attributes = dict(check.attributes or {})
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == "get_quote"
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["jsonrpc.request.id"] == "7"
    # A reference, never the id: the id lets its holder into the session.
    assert attributes["mcp.session.id"] == session_reference("session-1")
    assert attributes["mcp.session.id"].startswith("sha256:")
    assert attributes["mcp.protocol.version"] == V2026
    assert attributes["policy_service.decision"] == "allow"
    assert attributes["policy_service.reason"] == "allowed"
    assert attributes["policy_service.rule"] == "read"
    assert attributes["policy_service.bundle.revision"] == "test-1"
    assert attributes["policy_service.upstream"] == "fininfo"
    assert attributes["policy_service.ratelimit.remaining"] == 99
    assert attributes["policy_service.decision_id"] == decision_id_of(response)
    # The span's attributes say how each phase ended; the events say when, and how long.
    assert attributes["policy_service.credential"] == "jwt"
    assert attributes["policy_service.ratelimit.verdict"] == "admitted"
    assert all(set(event) == {"policy_service.phase.duration_ms"} for event in events.values())


async def test_request_headers_are_the_parent_when_the_metadata_has_none(
    bundle: TestBundle,
) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    headers = mcp_headers(token, traceparent=traceparent(CLIENT_TRACE, CLIENT_SPAN))
    await harness.check(headers=headers, body=tool_call())
    check = harness.span(CHECK_SPAN_NAME)
    assert format_trace_id(check.context.trace_id) == CLIENT_TRACE
    assert check.parent is not None
    assert format_span_id(check.parent.span_id) == CLIENT_SPAN


async def test_envoys_metadata_wins_over_the_request_headers(bundle: TestBundle) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    headers = mcp_headers(token, traceparent=traceparent(CLIENT_TRACE, CLIENT_SPAN))
    await harness.check(
        metadata=[("traceparent", traceparent(ENVOY_TRACE, ENVOY_SPAN))],
        headers=headers,
        body=tool_call(),
    )
    check = harness.span(CHECK_SPAN_NAME)
    assert format_trace_id(check.context.trace_id) == ENVOY_TRACE


async def test_an_mcp_meta_traceparent_is_linked_not_adopted(bundle: TestBundle) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    body = tool_call(meta={"traceparent": traceparent(AGENT_TRACE, AGENT_SPAN)})
    await harness.check(
        metadata=[("traceparent", traceparent(ENVOY_TRACE, ENVOY_SPAN))],
        headers=mcp_headers(token),
        body=body,
    )
    check = harness.span(CHECK_SPAN_NAME)
    assert format_trace_id(check.context.trace_id) == ENVOY_TRACE
    links = [
        (format_trace_id(link.context.trace_id), format_span_id(link.context.span_id))
        for link in check.links
    ]
    assert links == [(AGENT_TRACE, AGENT_SPAN)]


async def test_a_garbled_meta_traceparent_is_ignored(bundle: TestBundle) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    response = await harness.check(
        headers=mcp_headers(token), body=tool_call(meta={"traceparent": "00-zz-yy-01"})
    )
    assert response.HasField("ok_response")
    assert list(harness.span(CHECK_SPAN_NAME).links) == []


async def test_an_unsampled_trace_records_no_spans_but_the_audit_keeps_its_trace_id(
    bundle: TestBundle,
) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    await harness.check(
        metadata=[("traceparent", traceparent(ENVOY_TRACE, ENVOY_SPAN, flags="00"))],
        headers=mcp_headers(token),
        body=tool_call(),
    )
    assert harness.spans() == []
    [event] = harness.sink.events()
    assert event["trace_id"] == ENVOY_TRACE
    assert "span_id" not in event


async def test_an_unsampled_check_never_reaches_the_sdk(bundle: TestBundle) -> None:
    """Most production checks are unsampled: they cost no sampler call and no span object."""
    sampler = CountingSampler(ParentBased(ALWAYS_ON))
    harness = Harness(bundle, sampler=sampler)
    token = bundle.token("fininfo:read")
    for flags in ("00", "01"):
        response = await harness.check(
            metadata=[("traceparent", traceparent(ENVOY_TRACE, ENVOY_SPAN, flags=flags))],
            headers=mcp_headers(token),
            body=tool_call(),
        )
        assert response.HasField("ok_response")
    assert sampler.calls == 1  # the sampled check's only
    assert [span.name for span in harness.spans()] == [CHECK_SPAN_NAME]


class CountingSampler(ParentBased):
    def __init__(self, inner: ParentBased) -> None:
        super().__init__(ALWAYS_ON)
        self.inner = inner
        self.calls = 0

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        self.calls += 1
        return self.inner.should_sample(*args, **kwargs)


async def test_a_denial_is_described_on_the_span(bundle: TestBundle) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    response = await harness.check(
        headers=mcp_headers(token, tool="place_trade"), body=tool_call("place_trade")
    )
    assert response.denied_response.status.code == 403
    attributes = dict(harness.span(CHECK_SPAN_NAME).attributes or {})
    assert attributes["policy_service.decision"] == "deny"
    assert attributes["policy_service.reason"] == "insufficient_scope"
    assert attributes["policy_service.rule"] == "trade"
    assert attributes["policy_service.missing_scopes"] == ("fininfo:trade",)
    events = {
        event.name: dict(event.attributes or {}) for event in harness.span(CHECK_SPAN_NAME).events
    }
    assert events["policy"]["policy_service.reason"] == "insufficient_scope"
    # Refused before the limits: no rate-limit phase at all.
    assert list(events) == ["identity", "policy"]


async def test_a_fault_inside_the_pipeline_is_audited_and_marks_the_span(
    bundle: TestBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = Harness(bundle)

    async def broken(request: HttpRequest, record: CheckRecord | None = None) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(harness.gateway, "check", broken)
    response = await harness.check(headers={}, body=tool_call())
    assert response.denied_response.status.code == 503
    [event] = harness.sink.events()
    assert event["reason"] == "internal_error"
    assert event["decision_id"] == decision_id_of(response)
    check = harness.span(CHECK_SPAN_NAME)
    assert check.status.status_code is StatusCode.ERROR


async def test_no_token_or_key_reaches_a_span_or_an_event(bundle: TestBundle) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    await harness.check(headers=mcp_headers(token), body=tool_call())
    await harness.check(
        headers=mcp_headers(token, tool="place_trade"), body=tool_call("place_trade")
    )
    await harness.check(headers=mcp_headers(token + "x"), body=tool_call())
    api_key_headers = {"x-api-key": CI_BOT_KEY, "content-type": "application/json"}
    await harness.check(headers=api_key_headers, body=tool_call())
    secrets = (token, token.split(".")[2], CI_BOT_KEY)
    texts = [line.decode() for line in harness.sink.lines]
    for span in harness.spans():
        texts.append(json.dumps(dict(span.attributes or {}), default=str))
    assert len(texts) > 4
    for text in texts:
        for secret in secrets:
            assert secret not in text


async def test_tracing_off_makes_no_spans(bundle: TestBundle) -> None:
    harness = Harness(bundle, spans=False)
    token = bundle.token("fininfo:read")
    response = await harness.check(
        metadata=[("traceparent", traceparent(ENVOY_TRACE, ENVOY_SPAN))],
        headers=mcp_headers(token),
        body=tool_call(),
    )
    assert response.HasField("ok_response")
    [event] = harness.sink.events()
    assert event["trace_id"] == ENVOY_TRACE  # Envoy's trace, even when we make no spans


class BlockedExporter(SpanExporter):
    """An exporter stuck on a collector that never answers."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(30)
        return SpanExportResult.SUCCESS


async def test_a_stuck_exporter_never_holds_up_a_check(bundle: TestBundle) -> None:
    exporter = BlockedExporter()
    processor = BatchSpanProcessor(
        exporter, max_queue_size=16, max_export_batch_size=4, schedule_delay_millis=1
    )
    harness = Harness(bundle, exporter_processor=processor)
    token = bundle.token("fininfo:read")
    try:
        first = await harness.check(headers=mcp_headers(token), body=tool_call())
        assert first.HasField("ok_response")
        assert exporter.entered.wait(10), "the exporter never started"
        # The export thread is stuck; far more spans than the queue holds still get made.
        for _ in range(60):
            response = await harness.check(headers=mcp_headers(token), body=tool_call())
            assert response.HasField("ok_response")
        assert not exporter.release.is_set()
        assert len(harness.sink.lines) == 61
    finally:
        exporter.release.set()
        processor.shutdown()


# -- audit ---------------------------------------------------------------------------


async def test_every_decision_writes_one_event_that_matches_the_answer(
    bundle: TestBundle,
) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    responses = [
        await harness.check(headers=mcp_headers(token), body=tool_call()),  # allow
        await harness.check(  # insufficient scope
            headers=mcp_headers(token, tool="place_trade"), body=tool_call("place_trade")
        ),
        await harness.check(headers={"content-type": "application/json"}, body=tool_call()),
        await harness.check(headers=mcp_headers(token), body=b"{not json"),  # malformed
        await harness.check(path="/nowhere", headers={}, body=b""),  # no upstream
        await harness.check(  # the RFC 9728 document, served by the gateway
            method="GET", path="/.well-known/oauth-protected-resource/fininfo/mcp"
        ),
    ]
    events = harness.sink.events()
    assert len(events) == len(responses)
    assert [event["decision_id"] for event in events] == [decision_id_of(r) for r in responses]
    assert len({event["decision_id"] for event in events}) == len(events)
    assert [(event["decision"], event["reason"]) for event in events] == [
        ("allow", "allowed"),
        ("deny", "insufficient_scope"),
        ("deny", "missing_credential"),
        ("deny", "invalid_json"),
        ("deny", "no_upstream"),
        ("serve", "metadata"),
    ]
    for response, event in zip(responses, events, strict=True):
        assert response.dynamic_metadata.fields["decision_id"].string_value == event["decision_id"]
        # The event is the published schema's JSON: it parses with no unknown field.
        json_format.ParseDict(event, audit_pb2.AuditEvent())


async def test_an_event_says_who_called_what_and_how_it_ended(bundle: TestBundle) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read", subject="alice", client_id="desk-app")
    await harness.check(
        metadata=[("traceparent", traceparent(ENVOY_TRACE, ENVOY_SPAN))],
        headers=mcp_headers(token),
        body=tool_call(),
    )
    await harness.check(
        headers=mcp_headers(token, tool="place_trade"), body=tool_call("place_trade")
    )
    allowed, refused = harness.sink.events()
    assert allowed["schema"] == "policy_service.audit.v1"
    assert allowed["trace_id"] == ENVOY_TRACE
    assert len(allowed["span_id"]) == 16
    assert allowed["request_id"] == "req-1"
    assert allowed["bundle_revision"] == "test-1"
    assert allowed["rules"] == ["read"]
    assert allowed["caller"] == {
        "subject": "alice",
        "issuer": "test-idp",
        "client_id": "desk-app",
        "credential": "jwt",
        "scopes": ["fininfo:read"],
    }
    assert allowed["target"] == {
        "http_method": "POST",
        "path": "/fininfo/mcp",
        "upstream": "fininfo",
        "protocol": "mcp",
        "calls": [{"kind": "tool", "method": "tools/call", "name": "get_quote", "jsonrpc_id": "7"}],
        "mcp_session_id": session_reference("session-1"),
        "mcp_protocol_version": V2026,
    }
    assert allowed["rate_limit"]["verdict"] == "admitted"
    assert allowed["rate_limit"]["limits"][0]["name"] == "per-client"
    assert allowed["rate_limit"]["limits"][0]["remaining"] == 99
    assert allowed["latency_ms"] >= 0
    assert "http_status" not in allowed

    assert refused["decision"] == "deny"
    assert refused["http_status"] == 403
    assert refused["rules"] == ["trade"]
    assert refused["missing_scopes"] == ["fininfo:trade"]
    assert refused["message"] == "the token lacks a scope this call needs"
    assert refused["caller"]["subject"] == "alice"
    assert "rate_limit" not in refused


async def test_arguments_are_recorded_only_when_the_bundle_says_and_redacted(
    tmp_path: Path,
) -> None:
    body = tool_call()
    body["params"]["arguments"] = {
        "symbol": "ACME",
        "Password": "hunter2",
        "nested": {"account_number": "12345678", "note": "x" * 2000},
        "list": [{"api_key": "k-123"}],
    }
    (tmp_path / "off").mkdir()
    off = Harness(write_test_bundle(tmp_path / "off"))
    token = off.bundle.token("fininfo:read")
    await off.check(headers=mcp_headers(token), body=body)
    [event] = off.sink.events()
    assert "arguments" not in event["target"]["calls"][0]

    on_dir = tmp_path / "on"
    on_dir.mkdir()
    audit = "  include_arguments: true\n  redact_keys: [Account_Number]\n"
    on = Harness(write_test_bundle(on_dir, audit=audit))
    token = on.bundle.token("fininfo:read")
    await on.check(headers=mcp_headers(token), body=body)
    [event] = on.sink.events()
    arguments = event["target"]["calls"][0]["arguments"]
    assert arguments["symbol"] == "ACME"
    assert arguments["Password"] == "[redacted]"
    assert arguments["nested"]["account_number"] == "[redacted]"
    assert arguments["nested"]["note"] == "x" * 1024 + "…"
    assert arguments["list"] == [{"api_key": "[redacted]"}]
    assert b"hunter2" not in on.sink.lines[0]
    json_format.ParseDict(event, audit_pb2.AuditEvent())


async def test_audited_arguments_of_any_json_size_and_script_are_written_whole(
    tmp_path: Path,
) -> None:
    """Integers past 64 bits and non-ASCII text are JSON too: the line keeps them exactly."""
    body = tool_call()
    body["params"]["arguments"] = {"big": 2**70, "small": -(2**63), "text": "Grüße \u2028 ✓"}
    harness = Harness(write_test_bundle(tmp_path, audit="  include_arguments: true\n"))
    token = harness.bundle.token("fininfo:read")
    response = await harness.check(headers=mcp_headers(token), body=body)
    assert response.HasField("ok_response")
    [line] = harness.sink.lines
    assert line.endswith(b"}\n")
    assert line.count(b"\n") == 1
    arguments = json.loads(line)["target"]["calls"][0]["arguments"]
    assert arguments == {"big": 2**70, "small": -(2**63), "text": "Grüße \u2028 ✓"}
    assert "Grüße".encode() in line  # UTF-8, not \u escapes


async def test_when_the_audit_cannot_be_written_closed_refuses_the_call(
    bundle: TestBundle,
) -> None:
    harness = Harness(bundle, sink=MemoryAuditSink(failing=True))
    token = bundle.token("fininfo:read")
    response = await harness.check(headers=mcp_headers(token), body=tool_call())
    assert response.denied_response.status.code == 503
    body = json.loads(response.denied_response.body)
    assert body["error"]["data"]["reason"] == "audit_unavailable"
    assert body["id"] == 7
    assert decision_id_of(response)
    # A refusal stays the refusal it was.
    refused = await harness.check(
        headers=mcp_headers(token, tool="place_trade"), body=tool_call("place_trade")
    )
    assert refused.denied_response.status.code == 403
    assert harness.trail.auditor.failed == 2
    assert harness.sample("policy_service_audit_events_total", result="failed") == 2
    assert (
        harness.sample(
            "policy_service_checks_total",
            decision="deny",
            reason="audit_unavailable",
            upstream="fininfo",
            method="tools/call",
            tool="get_quote",
        )
        == 1
    )


async def test_when_the_audit_cannot_be_written_open_lets_the_call_through(
    bundle: TestBundle, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(bundle, sink=MemoryAuditSink(failing=True), failure=AuditFailureMode.OPEN)
    token = bundle.token("fininfo:read")
    for _ in range(3):
        response = await harness.check(headers=mcp_headers(token), body=tool_call())
        assert response.HasField("ok_response")
    assert harness.sample("policy_service_audit_events_total", result="failed") == 3
    # Said once, not once per check.
    failures = [r for r in caplog.records if "audit events cannot be written" in r.message]
    assert len(failures) == 1
    assert "calls go through unaudited" in failures[0].message


# -- metrics -------------------------------------------------------------------------


async def test_checks_are_counted_with_labels_from_the_bundle_only(bundle: TestBundle) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    for _ in range(2):
        await harness.check(headers=mcp_headers(token), body=tool_call())
    invented = "tool-" + "x" * 40
    await harness.check(headers=mcp_headers(token, tool=invented), body=tool_call(invented))
    odd_method = {"jsonrpc": "2.0", "id": 1, "method": "vendor/odd-method", "params": {}}
    headers = mcp_headers(token)
    headers["mcp-method"] = "vendor/odd-method"
    del headers["mcp-name"]
    await harness.check(headers=headers, body=odd_method)

    assert (
        harness.sample(
            "policy_service_checks_total",
            decision="allow",
            reason="allowed",
            upstream="fininfo",
            method="tools/call",
            tool="get_quote",
        )
        == 2
    )
    assert (
        harness.sample(
            "policy_service_checks_total",
            decision="deny",
            reason="no_matching_rule",
            upstream="fininfo",
            method="tools/call",
            tool="other",
        )
        == 1
    )
    assert (
        harness.sample(
            "policy_service_checks_total",
            decision="deny",
            reason="no_matching_rule",
            upstream="fininfo",
            method="other",
            tool="none",
        )
        == 1
    )
    assert harness.sample("policy_service_check_duration_seconds_count", decision="allow") == 2
    assert harness.sample("policy_service_ratelimit_checks_total", verdict="admitted") == 2
    assert harness.sample("policy_service_audit_events_total", result="written") == 4
    assert harness.sample("policy_service_bundle_info", revision="test-1") == 1
    assert harness.sample("policy_service_bundle_loads_total", result="ok") == 1
    assert harness.sample("policy_service_ratelimit_breaker_open") == 0
    exposition = _exposition(harness)
    assert invented not in exposition
    assert "vendor/odd-method" not in exposition


async def test_exhausted_limits_are_counted_by_name(tmp_path: Path) -> None:
    limits = """\
  - name: tiny
    rate: 1/hour
    key: [client]
    match: {upstreams: [fininfo], tools: [get_quote]}
  - name: watch
    rate: 1/hour
    shadow: true
    match: {upstreams: [fininfo]}
"""
    harness = Harness(write_test_bundle(tmp_path, limits=limits))
    token = harness.bundle.token("fininfo:read")
    for _ in range(3):
        await harness.check(headers=mcp_headers(token), body=tool_call())
    assert harness.sample("policy_service_ratelimit_checks_total", verdict="exceeded") == 2
    assert (
        harness.sample("policy_service_ratelimit_exceeded_total", limit="tiny", shadow="false") == 2
    )
    assert (
        harness.sample("policy_service_ratelimit_exceeded_total", limit="watch", shadow="true") >= 1
    )


def _exposition(harness: Harness) -> str:
    from prometheus_client import generate_latest

    return generate_latest(harness.metrics.registry).decode()


async def test_a_route_tag_naming_no_upstream_is_its_own_reason_with_the_tag_everywhere(
    bundle: TestBundle, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(bundle)
    token = bundle.token("fininfo:read")
    with caplog.at_level("WARNING", logger="policy_service.telemetry"):
        for _ in range(3):
            response = await harness.check(
                headers=mcp_headers(token),
                body=tool_call(),
                context_extensions={"upstream": "payroll", "protocol": "mcp"},
            )
            # The path would match fininfo's prefix: a tag must never fall through to it.
            assert response.denied_response.status.code == 503
            body = json.loads(response.denied_response.body)
            assert body["error"] == "unknown_upstream"
            assert "payroll" not in response.denied_response.body  # the client learns no names
    events = harness.sink.events()
    assert [(e["decision"], e["reason"], e["http_status"]) for e in events] == [
        ("deny", "unknown_upstream", 503)
    ] * 3
    assert all(event["target"]["upstream"] == "payroll" for event in events)
    assert (
        harness.sample(
            "policy_service_checks_total",
            decision="deny",
            reason="unknown_upstream",
            upstream="payroll",
            method="none",
            tool="none",
        )
        == 3.0
    )
    # One warning naming the tag, not one per check.
    warnings = [r.getMessage() for r in caplog.records if "names no upstream" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "upstream='payroll'" in warnings[0]
    assert "bundle revision test-1" in warnings[0]


async def test_without_a_route_tag_an_unmatched_path_is_still_no_upstream(
    bundle: TestBundle,
) -> None:
    harness = Harness(bundle)
    response = await harness.check(path="/nowhere", headers={}, body=b"")
    assert response.denied_response.status.code == 404
    assert json.loads(response.denied_response.body)["error"] == "no_upstream"


@pytest.mark.parametrize(("flags", "recorded"), [("01", True), ("00", False)])
def test_an_answer_span_follows_envoys_sampling(flags: str, recorded: bool) -> None:
    from opentelemetry import propagate

    from policy_service.telemetry.tracing import ANSWER_SPAN_NAME

    provider, exporter = capture_spans(None)
    trail = Trail(tracer_provider=provider)
    parent = propagate.extract({"traceparent": traceparent(ENVOY_TRACE, ENVOY_SPAN, flags)})
    span = trail.answer_span(parent)
    assert span.is_recording() is recorded
    span.end()
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == ([ANSWER_SPAN_NAME] if recorded else [])
    if recorded:
        context = finished[0].get_span_context()
        assert format_trace_id(context.trace_id) == ENVOY_TRACE
        assert finished[0].parent is not None
        assert format_span_id(finished[0].parent.span_id) == ENVOY_SPAN
    assert Trail().answer_span(parent) is INVALID_SPAN  # tracing off: no span at all
