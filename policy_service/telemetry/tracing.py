"""Spans: one per Check, continuing Envoy's trace, with a child per phase.

Envoy's ext_authz client opens an egress span for the Check call and sends its context in
the gRPC metadata; the Check span is its child. Without that, the request's own headers
are the parent (a client that sent ``traceparent``). An MCP body's
``params._meta.traceparent`` is the agent's own context: the Check span links to it rather
than adopting it, since the body is the caller's word and Envoy's trace is the gateway's.

Attribute names follow the OpenTelemetry MCP conventions (``mcp.method.name``,
``gen_ai.tool.name``, ``jsonrpc.request.id``, ``mcp.session.id``,
``mcp.protocol.version``); the policy's own are under ``policy_service.``. No span carries
a token, an API key, a claim value other than the client id, or a header value.

Tracing is configured by the standard ``OTEL_*`` variables and is off unless an exporter
or an OTLP endpoint is named, so an unconfigured service spends nothing on spans.
Sampling follows the parent (``parentbased_always_on`` unless ``OTEL_TRACES_SAMPLER`` says
otherwise); export runs in a background thread and drops spans rather than wait.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from policy_service.authorization.policy import Granted, PolicyOutcome
from policy_service.decisions.model import Allow, Decision, Deny, Serve
from policy_service.errors import ConfigError
from policy_service.identity.principal import Principal
from policy_service.request.model import A2aRequest, CallKind, HttpRequest, McpRequest
from policy_service.telemetry.otel_protos import ensure_otel_protos

if TYPE_CHECKING:
    # The limiter's Redis store opens spans through this module: types only, no cycle.
    from policy_service.ratelimits.limiter import RateLimitResult
    from policy_service.telemetry.record import CheckRecord

CHECK_SPAN_NAME = "envoy.service.auth.v3.Authorization/Check"
TRACER_NAME = "policy_service"
DEFAULT_SERVICE_NAME = "policy-service"

# The policy's own attributes.
DECISION = "policy_service.decision"
DECISION_ID = "policy_service.decision_id"
REASON = "policy_service.reason"
RULE = "policy_service.rule"
MISSING_SCOPES = "policy_service.missing_scopes"
BUNDLE_REVISION = "policy_service.bundle.revision"
UPSTREAM = "policy_service.upstream"
CREDENTIAL = "policy_service.credential"
ISSUER = "policy_service.issuer"
CLIENT_ID = "policy_service.client_id"
LIMIT_VERDICT = "policy_service.ratelimit.verdict"
LIMIT_REMAINING = "policy_service.ratelimit.remaining"
LIMIT_NAME = "policy_service.ratelimit.limit"
STORE_ERROR = "policy_service.ratelimit.store_error"
A2A_METHOD = "a2a.method"

CHECK_ATTRIBUTES: Mapping[str, AttributeValue] = {
    "rpc.system": "grpc",
    "rpc.service": "envoy.service.auth.v3.Authorization",
    "rpc.method": "Check",
}
_W3C = TraceContextTextMapPropagator()


def setup_tracing(environ: Mapping[str, str]) -> TracerProvider | None:
    """A tracer provider as the ``OTEL_*`` variables describe, or None when tracing is off.

    ``OTEL_TRACES_EXPORTER`` (otlp, console, none) and ``OTEL_EXPORTER_OTLP_ENDPOINT``
    turn it on; the OTLP exporter, the batch processor and the sampler read the rest of
    the standard variables themselves.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names:
        if not otlp_endpoint(environ):
            return None
        names = "otlp"
    chosen = [_exporter(name.strip(), environ) for name in names.split(",") if name.strip()]
    exporters = [exporter for exporter in chosen if exporter is not None]
    if not exporters:
        return None
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def otlp_endpoint(environ: Mapping[str, str]) -> str | None:
    """Where OTLP trace export goes: the traces-specific variable first, as the SDK reads it."""
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: '{name}' is not one of otlp, console, none")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if protocol.strip() != "grpc":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: only grpc is supported, not '{protocol}'")
    # xds-protos installs an old copy of the OTel protos over opentelemetry-proto's: put
    # them back (and say so) before the exporter imports them.
    ensure_otel_protos()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def parent_context(metadata: Mapping[str, str], headers: Mapping[str, str]) -> Context:
    """The Check span's parent: Envoy's ext_authz span from the gRPC metadata, else the
    request's own trace headers (propagators as ``OTEL_PROPAGATORS`` configures)."""
    context = propagate.extract(metadata)
    if trace.get_current_span(context).get_span_context().is_valid:
        return context
    return propagate.extract(headers)


def link_to(traceparent: str | None) -> Link | None:
    """A link to the agent's span named in an MCP body's ``_meta.traceparent``, if valid."""
    if traceparent is None:
        return None
    context = _W3C.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    return Link(span_context) if span_context.is_valid else None


@contextmanager
def phase_span(
    tracer: trace.Tracer,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """A child of the current span, or nothing at all when the check is not being traced
    (an unsampled or untraced check pays for no spans)."""
    if not trace.get_current_span().is_recording():
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes) as span:
        yield span


def set_identity_attributes(span: trace.Span, result: Principal | Deny) -> None:
    if not span.is_recording():
        return
    if isinstance(result, Principal):
        span.set_attribute(CREDENTIAL, result.credential.value)
        span.set_attribute(ISSUER, result.issuer)
        if result.client_id:
            span.set_attribute(CLIENT_ID, result.client_id)
    else:
        span.set_attribute(REASON, result.reason)


def set_policy_attributes(span: trace.Span, outcome: PolicyOutcome) -> None:
    if not span.is_recording():
        return
    if isinstance(outcome, Granted):
        span.set_attribute(DECISION, "allow")
        span.set_attribute(RULE, ",".join(outcome.rules))
        return
    span.set_attribute(DECISION, "deny")
    span.set_attribute(REASON, outcome.reason.value)
    if outcome.rule:
        span.set_attribute(RULE, outcome.rule)
    if outcome.missing_scopes:
        span.set_attribute(MISSING_SCOPES, list(outcome.missing_scopes))


def set_limit_attributes(span: trace.Span, result: RateLimitResult) -> None:
    if not span.is_recording():
        return
    span.set_attribute(LIMIT_VERDICT, result.verdict.value)
    remaining = lowest_remaining(result)
    if remaining is not None:
        span.set_attribute(LIMIT_REMAINING, remaining)
    blocking = result.blocking
    if blocking is not None:
        span.set_attribute(LIMIT_NAME, blocking.limit.name)
    if result.store_error:
        span.set_attribute(STORE_ERROR, result.store_error)


def lowest_remaining(result: RateLimitResult) -> int | None:
    """Tokens left in the tightest enforced limit: how close the caller is to a 429."""
    enforced = result.enforced
    return min(state.remaining for state in enforced) if enforced else None


def set_check_attributes(
    span: trace.Span, request: HttpRequest, decision: Decision, record: CheckRecord
) -> None:
    """What the Check decided, on the Check span, once the decision is final."""
    if not span.is_recording():
        return
    attributes: dict[str, AttributeValue] = {
        DECISION_ID: record.decision_id,
        DECISION: decision_name(decision),
        REASON: decision.reason,
        "http.request.method": request.method,
        "url.path": request.path,
    }
    if record.bundle is not None:
        attributes[BUNDLE_REVISION] = record.bundle.revision
    if record.upstream is not None:
        attributes[UPSTREAM] = record.upstream.name
    if isinstance(decision, Allow) and decision.rules:
        attributes[RULE] = ",".join(decision.rules)
    elif isinstance(decision, Deny):
        if decision.rule:
            attributes[RULE] = decision.rule
        if decision.missing_scopes:
            attributes[MISSING_SCOPES] = list(decision.missing_scopes)
    if record.principal is not None:
        attributes[CREDENTIAL] = record.principal.credential.value
        attributes[ISSUER] = record.principal.issuer
        if record.principal.client_id:
            attributes[CLIENT_ID] = record.principal.client_id
    if record.limits is not None:
        attributes[LIMIT_VERDICT] = record.limits.verdict.value
        remaining = lowest_remaining(record.limits)
        if remaining is not None:
            attributes[LIMIT_REMAINING] = remaining

    parsed = record.parsed
    if isinstance(parsed, McpRequest):
        attributes["mcp.protocol.version"] = parsed.protocol_version
        if parsed.session_id:
            attributes["mcp.session.id"] = parsed.session_id
        if parsed.calls:
            call = parsed.calls[0]
            if call.method:
                attributes["mcp.method.name"] = call.method
            if call.request_id is not None:
                attributes["jsonrpc.request.id"] = str(call.request_id)
            if call.kind is CallKind.TOOL and call.name:
                attributes["gen_ai.tool.name"] = call.name
                attributes["gen_ai.operation.name"] = "execute_tool"
            elif call.kind is CallKind.RESOURCE and call.name:
                attributes["mcp.resource.uri"] = call.name
            elif call.kind is CallKind.PROMPT and call.name:
                attributes["gen_ai.prompt.name"] = call.name
        if parsed.is_batch:
            attributes["jsonrpc.batch.size"] = len(parsed.calls)
    elif isinstance(parsed, A2aRequest):
        attributes[A2A_METHOD] = parsed.method
        if parsed.request_id is not None:
            attributes["jsonrpc.request.id"] = str(parsed.request_id)
    span.set_attributes(attributes)


def mark_internal_error(span: trace.Span) -> None:
    span.set_status(Status(StatusCode.ERROR, "internal_error"))


def decision_name(decision: Decision) -> str:
    """ "allow", "deny" or "serve": the decision label on spans, events and metrics."""
    if isinstance(decision, Allow):
        return "allow"
    if isinstance(decision, Serve):
        return "serve"
    return "deny"
