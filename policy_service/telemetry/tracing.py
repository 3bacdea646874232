"""What a check's span says: the Check span's attributes and its phases' events.

The plumbing (provider, propagation, phase spans) is ``policy_service.otel``; this module is
the domain side, read by the servicer's trail and the pipeline's phases.

Envoy's ext_authz client opens an egress span for the Check call and sends its context in
the gRPC metadata; the Check span is its child. Without that, the request's own headers
are the parent (a client that sent ``traceparent``). An MCP body's
``params._meta.traceparent`` is the agent's own context: the Check span links to it rather
than adopting it, since the body is the caller's word and Envoy's trace is the gateway's.

Attribute names follow the OpenTelemetry MCP conventions (``mcp.method.name``,
``gen_ai.tool.name``, ``jsonrpc.request.id``, ``mcp.session.id``,
``mcp.protocol.version``); the policy's own are under ``policy_service.``. No span carries
a token, an API key, a claim value other than the client id, or a header value.

A check makes one span. Its phases (identity, policy, rate_limit) are events on it, each
with the phase's duration, not child spans: a child span costs the SDK and the exporter as
much as the Check span itself, and a phase of a few microseconds gains nothing from a bar
of its own in a waterfall. What talks to another process keeps a CLIENT span (the Redis
round trip), since that is where a check waits. A check whose parent is not sampled makes
no span object at all (see ``Trail.check_span``).

Tracing is configured by the standard ``OTEL_*`` variables and is off unless an exporter
or an OTLP endpoint is named, so an unconfigured service spends nothing on spans.
Sampling follows the parent (``parentbased_always_on`` unless ``OTEL_TRACES_SAMPLER`` says
otherwise); export runs in a background thread and drops spans rather than wait.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from policy_service.authorization.policy import Granted, PolicyOutcome
from policy_service.decisions.model import Allow, Decision, Deny, Serve
from policy_service.identity.principal import Principal
from policy_service.ratelimits.limiter import RateLimitResult
from policy_service.request.model import CallKind, HttpRequest

if TYPE_CHECKING:
    from policy_service.telemetry.facts import CheckFacts
    from policy_service.telemetry.record import CheckRecord

CHECK_SPAN_NAME = "envoy.service.auth.v3.Authorization/Check"
ANSWER_SPAN_NAME = "envoy.service.ext_proc.v3.ExternalProcessor/Process"

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
PHASE_MS = "policy_service.phase.duration_ms"  # on each phase's event
A2A_METHOD = "a2a.method"

CHECK_ATTRIBUTES: Mapping[str, AttributeValue] = {
    "rpc.system": "grpc",
    "rpc.service": "envoy.service.auth.v3.Authorization",
    "rpc.method": "Check",
}


def identity_event(span: trace.Span, result: Principal | Deny, started: float) -> None:
    """The identity phase, as an event on the Check span (the caller checked it records).

    Phase events carry their duration and only what the Check span's attributes do not
    already say: every attribute costs the SDK and the exporter on each traced check."""
    attributes: dict[str, AttributeValue] = {PHASE_MS: _since_ms(started)}
    if isinstance(result, Deny):
        attributes[REASON] = result.reason
    span.add_event("identity", attributes)


def policy_event(span: trace.Span, outcome: PolicyOutcome, started: float) -> None:
    attributes: dict[str, AttributeValue] = {PHASE_MS: _since_ms(started)}
    if not isinstance(outcome, Granted):
        attributes[REASON] = outcome.reason.value
    span.add_event("policy", attributes)


def limit_event(span: trace.Span, result: RateLimitResult, started: float) -> None:
    attributes: dict[str, AttributeValue] = {PHASE_MS: _since_ms(started)}
    blocking = result.blocking
    if blocking is not None:
        attributes[LIMIT_NAME] = blocking.limit.name
    if result.store_error:
        attributes[STORE_ERROR] = result.store_error
    span.add_event("rate_limit", attributes)


def _since_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def lowest_remaining(result: RateLimitResult) -> int | None:
    """Tokens left in the tightest enforced limit: how close the caller is to a 429."""
    enforced = result.enforced
    return min(state.remaining for state in enforced) if enforced else None


def set_check_attributes(
    span: trace.Span,
    request: HttpRequest,
    decision: Decision,
    record: CheckRecord,
    facts: CheckFacts,
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
    if facts.upstream is not None:
        attributes[UPSTREAM] = facts.upstream
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
    if facts.request_id is not None:
        attributes["jsonrpc.request.id"] = facts.request_id
    if facts.protocol == "a2a" and facts.method:
        attributes[A2A_METHOD] = facts.method
    if facts.mcp_protocol_version is not None:
        attributes["mcp.protocol.version"] = facts.mcp_protocol_version
        if facts.mcp_session_id:
            attributes["mcp.session.id"] = facts.mcp_session_id
        if facts.method:
            attributes["mcp.method.name"] = facts.method
        if facts.target_kind is CallKind.TOOL and facts.target:
            attributes["gen_ai.tool.name"] = facts.target
            attributes["gen_ai.operation.name"] = "execute_tool"
        elif facts.target_kind is CallKind.RESOURCE and facts.target:
            attributes["mcp.resource.uri"] = facts.target
        elif facts.target_kind is CallKind.PROMPT and facts.target:
            attributes["gen_ai.prompt.name"] = facts.target
        if facts.batch_size:
            attributes["jsonrpc.batch.size"] = facts.batch_size
    span.set_attributes(attributes)


def decision_name(decision: Decision) -> str:
    """ "allow", "deny" or "serve": the decision label on spans, events and metrics."""
    if isinstance(decision, Allow):
        return "allow"
    if isinstance(decision, Serve):
        return "serve"
    return "deny"


def describe_answer(span: trace.Span, attributes: Mapping[str, AttributeValue]) -> None:
    """What the response side did to one answer, on its span (counts and names only)."""
    span.set_attributes(attributes)
    if str(attributes.get("policy_service.answer.outcome", "")).startswith("response_"):
        span.set_status(Status(StatusCode.ERROR, str(attributes["policy_service.answer.outcome"])))
