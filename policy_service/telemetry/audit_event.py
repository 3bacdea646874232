"""Audit events: one JSON object per decision, in the schema of
protos/policy_service/audit/v1/audit.proto. ``audit.Auditor`` writes them.

Events are plain dicts (a test parses every kind of event into the proto, so the two
cannot drift); building the proto per check would cost more than the rest of the event.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from policy_service.decisions.model import Allow, Decision, Deny
from policy_service.decisions.render import http_status_of
from policy_service.identity.principal import Principal
from policy_service.policy.model import AuditPolicy
from policy_service.ratelimits.limiter import RateLimitResult
from policy_service.request.model import A2aRequest, HttpRequest, JsonRpcCall, McpRequest
from policy_service.telemetry.facts import CheckFacts
from policy_service.telemetry.record import CheckRecord, DryRunRecord
from policy_service.telemetry.tracing import decision_name

SCHEMA = "policy_service.audit.v1"
REDACTED = "[redacted]"
MAX_ARGUMENT_STRING = 1024  # longer argument strings are cut: events stay small
_CALLER = "audit_caller"  # Principal.derived key


def audit_event(
    request: HttpRequest,
    decision: Decision,
    record: CheckRecord,
    facts: CheckFacts,
    *,
    latency_seconds: float,
    trace_id: str,
    span_id: str,
) -> dict[str, Any]:
    """The event for one decision. Fields that do not apply are left out."""
    event: dict[str, Any] = {
        "schema": SCHEMA,
        "time": rfc3339(time.time()),
        "decision_id": record.decision_id,
        "decision": decision_name(decision),
        "reason": decision.reason,
        "latency_ms": round(latency_seconds * 1000, 3),
    }
    if trace_id:
        event["trace_id"] = trace_id
    if span_id:
        event["span_id"] = span_id
    if request.request_id:
        event["request_id"] = request.request_id
    if record.bundle is not None:
        event["bundle_revision"] = record.bundle.revision
    if isinstance(decision, Allow):
        if decision.rules:
            event["rules"] = list(decision.rules)
    else:
        event["http_status"] = http_status_of(decision)
    if isinstance(decision, Deny):
        event["message"] = decision.message
        if decision.rule:
            event["rules"] = [decision.rule]
        if decision.missing_scopes:
            event["missing_scopes"] = list(decision.missing_scopes)
        if record.condition_failure is not None:
            event["condition_error"] = record.condition_failure

    caller = _caller(request, record)
    if caller:
        event["caller"] = caller
    policy = record.bundle.audit if record.bundle is not None else AuditPolicy()
    event["target"] = _target(request, record, facts, policy)
    if record.limits is not None:
        event["rate_limit"] = _rate_limit(record.limits)
    if record.dry_runs:
        event["dry_run"] = [_dry_run(dry_run) for dry_run in record.dry_runs]
    return event


def _dry_run(dry_run: DryRunRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "source": dry_run.source,
        "name": dry_run.name,
        "decision": dry_run.decision,
        "reason": dry_run.reason,
        "agrees": dry_run.agrees,
    }
    if dry_run.missing_scopes:
        entry["missing_scopes"] = list(dry_run.missing_scopes)
    return entry


def _caller(request: HttpRequest, record: CheckRecord) -> dict[str, Any]:
    principal = record.principal
    caller: dict[str, Any] = {} if principal is None else dict(_principal_fields(principal))
    if request.peer_address:
        caller["peer_address"] = request.peer_address
    if request.peer_principal:
        caller["peer_principal"] = request.peer_principal
    return caller


def _principal_fields(principal: Principal) -> dict[str, Any]:
    """Who the principal is, as events say it: made once per principal and kept on it (the
    verified-token cache holds the principal). Callers copy it before adding to it."""
    fields: dict[str, Any] | None = principal.derived.get(_CALLER)
    if fields is None:
        fields = {"subject": principal.subject, "issuer": principal.issuer}
        if principal.client_id:
            fields["client_id"] = principal.client_id
        fields["credential"] = principal.credential.value
        fields["scopes"] = sorted(principal.scopes)
        principal.derived[_CALLER] = fields
    return fields


def _target(
    request: HttpRequest, record: CheckRecord, facts: CheckFacts, policy: AuditPolicy
) -> dict[str, Any]:
    target: dict[str, Any] = {"http_method": request.method, "path": request.path}
    if facts.upstream is not None:
        target["upstream"] = facts.upstream
        target["protocol"] = facts.protocol
    elif facts.route_tag is not None:
        target["upstream"] = facts.route_tag
    parsed = record.parsed
    if isinstance(parsed, McpRequest):
        calls = [_call(call, policy) for call in parsed.calls if call.method is not None]
        if calls:
            target["calls"] = calls
        if facts.mcp_session_id:
            target["mcp_session_id"] = facts.mcp_session_id
        target["mcp_protocol_version"] = facts.mcp_protocol_version
    elif isinstance(parsed, A2aRequest):
        call: dict[str, Any] = {"kind": "a2a_method", "method": parsed.method}
        call["name"] = parsed.method
        if parsed.request_id is not None:
            call["jsonrpc_id"] = str(parsed.request_id)
        target["calls"] = [call]
    return target


def _call(call: JsonRpcCall, policy: AuditPolicy) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": call.kind.value, "method": call.method}
    entry["name"] = call.name if call.name is not None else call.method
    if call.request_id is not None:
        entry["jsonrpc_id"] = str(call.request_id)
    if policy.include_arguments and call.arguments is not None:
        entry["arguments"] = redact(call.arguments, policy.redact_keys)
    return entry


def redact(value: Any, keys: frozenset[str]) -> Any:
    """A copy of ``value`` with sensitive keys' values replaced and long strings cut."""
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if str(key).lower() in keys else redact(item, keys)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item, keys) for item in value]
    if isinstance(value, str) and len(value) > MAX_ARGUMENT_STRING:
        return value[:MAX_ARGUMENT_STRING] + "…"
    return value


def _rate_limit(result: RateLimitResult) -> dict[str, Any]:
    outcome: dict[str, Any] = {"verdict": result.verdict.value}
    if result.store_error:
        outcome["store_error"] = result.store_error
    if result.states:
        outcome["limits"] = [
            {
                "name": state.limit.name,
                "scope": state.limit.scope,
                "remaining": state.remaining,
                "limit": state.limit.rate.count,
                "window_seconds": state.limit.rate.window_seconds,
                "retry_after_ms": state.retry_after_ms,
                "shadow": state.limit.shadow,
            }
            for state in result.states
        ]
    return outcome


def rfc3339(epoch_seconds: float) -> str:
    """``2026-12-04T21:33:50.123456Z``. Every event needs one, and many share a second: the
    date and time part is formatted once per second, only the microseconds per event."""
    # Rounded as datetime.fromtimestamp rounds, so the text is the same as it formats.
    fraction, whole = math.modf(epoch_seconds)
    micros = round(fraction * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second_text(int(whole))}.{micros:06d}Z"


@functools.lru_cache(maxsize=4)
def _second_text(whole_seconds: int) -> str:
    return datetime.fromtimestamp(whole_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
