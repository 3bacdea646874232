"""Envoy's own spans, exported to a real OTLP receiver, and the trace context it hands ext_authz.

What the policy service relies on, pinned against the real Envoy (1.40, OpenTelemetry tracer):

* Each request gets a SERVER span named "ingress"; the ext_authz call gets a CLIENT child span,
  "async envoy.service.auth.v3.Authorization.Check egress", in the same trace.
* The Check call's gRPC metadata carries ``traceparent`` = that egress span (and an empty
  ``tracestate``): the service's spans nest under Envoy's. The CheckRequest's HTTP headers
  carry only a ``traceparent`` the client sent itself (the client's span, the ingress span's
  parent), never Envoy's: a fallback for the service, not the way to join the trace.
* A client's ``traceparent`` makes the ingress span join the client's trace, but sampling
  stays Envoy's choice: a client can turn it off (``-00``), not on.

Every Envoy here flushes spans after an hour or after one span: spans that arrive at all
prove the flush-by-count runtime key is the one Envoy reads.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from policy_service.gateway.bootstrap import render_envoy_config
from policy_service.gateway.layout import otlp_collector_from_endpoint
from tests.integration.test_envoy_ext_authz import (
    Backend,
    FakeAuthz,
    gateway_layout,
    like_the_policy_service,
    values,
)
from tests.support.envoy import EnvoyProcess
from tests.support.otlp import OtlpReceiver, ReceivedSpan

EGRESS_SPAN = "async envoy.service.auth.v3.Authorization.Check egress"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
AN_HOUR_MS = 3_600_000


# -- a fake policy service that also records the Check call's gRPC metadata ----------------


class RecordingAuthz(FakeAuthz):
    def __init__(self) -> None:
        super().__init__(like_the_policy_service, delay=0.0)
        self.metadata: list[dict[str, str | bytes]] = []

    async def Check(
        self, request: CheckRequest, context: grpc.aio.ServicerContext[CheckRequest, CheckResponse]
    ) -> CheckResponse:
        self.metadata.append({key: value for key, value in context.invocation_metadata() or ()})
        return await super().Check(request, context)


# -- the traced gateway: Envoy + recording policy service + echo backend + OTLP receiver ----


@dataclass
class TracedGateway:
    envoy: EnvoyProcess
    authz: RecordingAuthz
    receiver: OtlpReceiver
    url: str

    async def get(self, headers: dict[str, str] | None = None) -> dict[str, str]:
        """One request through Envoy; the headers the backend received."""
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            response = await http.get(f"{self.url}/fininfo/mcp", headers=headers)
        assert response.status_code == 200
        return dict(response.json()["headers"])

    async def spans_of(self, received: dict[str, str]) -> RequestSpans:
        """Envoy's ingress span for the request the backend received, and its ext_authz span."""
        request_id = received["x-request-id"]

        def arrived(spans: list[ReceivedSpan]) -> bool:
            return _request_spans(spans, request_id) is not None

        spans = await asyncio.to_thread(self.receiver.wait_for, arrived)
        found = _request_spans(spans, request_id)
        assert found is not None
        return found


@dataclass(frozen=True)
class RequestSpans:
    ingress: ReceivedSpan
    egress: ReceivedSpan


def _request_spans(spans: list[ReceivedSpan], request_id: str) -> RequestSpans | None:
    # Envoy tags the ingress span with the request's x-request-id, which the backend echoes.
    ingress = [s for s in spans if s.attributes.get("guid:x-request-id") == request_id]
    if not ingress:
        return None
    egress = [s for s in spans if s.name == EGRESS_SPAN and s.parent_span_id == ingress[0].span_id]
    return RequestSpans(ingress[0], egress[0]) if egress else None


StartGateway = Callable[..., Awaitable[TracedGateway]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    async with AsyncExitStack() as cleanup:

        async def start(**layout_changes: Any) -> TracedGateway:
            backend = Backend()
            threading.Thread(target=backend.serve_forever, daemon=True).start()
            cleanup.callback(backend.server_close)
            cleanup.callback(backend.shutdown)
            receiver = cleanup.enter_context(OtlpReceiver())
            authz = RecordingAuthz()
            server = grpc.aio.server()
            external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authz, server)
            authz_port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            cleanup.push_async_callback(server.stop, None)
            layout = replace(
                gateway_layout(backend.port, [authz_port]),
                otlp_collector=otlp_collector_from_endpoint(receiver.endpoint),
                trace_flush_interval_ms=AN_HOUR_MS,
                **layout_changes,
            )
            envoy = EnvoyProcess(render_envoy_config(layout))
            await asyncio.to_thread(envoy.start)
            cleanup.push_async_callback(asyncio.to_thread, envoy.stop)
            url = f"http://127.0.0.1:{layout.plain_port}"
            return TracedGateway(envoy, authz, receiver, url)

        yield start


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def access_log_lines(envoy: EnvoyProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in envoy.stdout.splitlines() if line.startswith("{")]


# -- spans --------------------------------------------------------------------------------


async def test_request_gets_an_ingress_span_and_a_check_egress_span_in_one_trace(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway()
    received = await gateway.get()
    spans = await gateway.spans_of(received)
    ingress, egress = spans.ingress, spans.egress
    assert (ingress.service_name, ingress.kind, ingress.name) == ("envoy", "SERVER", "ingress")
    assert ingress.parent_span_id == ""  # no traceparent came in: Envoy starts the trace
    assert len(ingress.trace_id) == 32
    assert len(ingress.span_id) == 16
    assert (egress.service_name, egress.kind) == ("envoy", "CLIENT")
    assert egress.trace_id == ingress.trace_id
    assert egress.parent_span_id == ingress.span_id
    assert egress.attributes["upstream_cluster"] == "authz"
    assert egress.attributes["ext_authz_status"] == "ext_authz_ok"
    # The router passes the ingress span (no upstream span: spawn_upstream_span is off).
    assert received["traceparent"] == traceparent(ingress.trace_id, ingress.span_id)


async def test_flush_knobs_are_the_runtime_keys_envoy_reads(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()
    runtime = json.loads(gateway.envoy.admin_get("/runtime"))["entries"]
    # Envoy prints a static layer's numbers as doubles ("3.6e+06") and reads them as integers.
    assert float(runtime["tracing.opentelemetry.flush_interval_ms"]["final_value"]) == AN_HOUR_MS
    assert float(runtime["tracing.opentelemetry.min_flush_spans"]["final_value"]) == 1
    await gateway.spans_of(await gateway.get())  # arrives long before the hour is up


async def test_access_log_names_the_trace(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()
    received = await gateway.get()
    spans = await gateway.spans_of(received)
    request_id = received["x-request-id"]

    def logged() -> list[dict[str, Any]]:
        lines = access_log_lines(gateway.envoy)
        return [line for line in lines if line["request_id"] == request_id]

    # Envoy writes its access log on a timer of its own: wait for the line, not for a time.
    await asyncio.to_thread(_wait_until, lambda: bool(logged()))
    (line,) = logged()
    assert line["trace_id"] == spans.ingress.trace_id


def _wait_until(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout:g}s")
        time.sleep(0.05)


# -- what the policy service gets ---------------------------------------------------------


async def test_check_metadata_carries_the_egress_span(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()
    spans = await gateway.spans_of(await gateway.get())
    (metadata,) = gateway.authz.metadata
    assert metadata["traceparent"] == traceparent(spans.egress.trace_id, spans.egress.span_id)
    assert metadata["tracestate"] == ""  # Envoy sends the header even when it has no state
    # The CheckRequest's HTTP headers are the client's: nothing there names Envoy's spans.
    (check,) = gateway.authz.requests
    assert values(check, "traceparent") == []


async def test_client_traceparent_is_joined_and_reaches_the_check_unchanged(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway()
    sent = traceparent(CLIENT_TRACE, CLIENT_SPAN)
    spans = await gateway.spans_of(await gateway.get({"traceparent": sent}))
    assert spans.ingress.trace_id == CLIENT_TRACE
    assert spans.ingress.parent_span_id == CLIENT_SPAN
    assert spans.egress.trace_id == CLIENT_TRACE
    (metadata,) = gateway.authz.metadata
    assert metadata["traceparent"] == traceparent(CLIENT_TRACE, spans.egress.span_id)
    # In the CheckRequest: the client's header as sent, naming the client's span (the ingress
    # span's parent). A service that parents on it makes its spans siblings of Envoy's.
    (check,) = gateway.authz.requests
    assert values(check, "traceparent") == [sent.encode()]


async def test_a_client_can_turn_sampling_off(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()
    unsampled = traceparent(CLIENT_TRACE, CLIENT_SPAN, sampled=False)
    received = await gateway.get({"traceparent": unsampled})
    forwarded = received["traceparent"]
    assert forwarded.startswith(f"00-{CLIENT_TRACE}-")
    assert forwarded.endswith("-00")  # not recorded, and the backend is told so
    (metadata,) = gateway.authz.metadata
    assert str(metadata["traceparent"]).endswith("-00")


async def test_a_client_cannot_turn_sampling_on(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(trace_sampling_percent=0.0)
    joined = await gateway.get({"traceparent": traceparent(CLIENT_TRACE, CLIENT_SPAN)})
    forced = await gateway.get({"x-client-trace-id": "client-chosen"})
    # The client's trace is kept, its "sampled" is not; x-client-trace-id forces nothing.
    assert joined["traceparent"].startswith(f"00-{CLIENT_TRACE}-")
    assert joined["traceparent"].endswith("-00")
    assert forced["traceparent"].endswith("-00")
    assert all(str(m["traceparent"]).endswith("-00") for m in gateway.authz.metadata)
