"""The facts of one check, derived once from its record and read by every consumer.

The Check span's attributes, the audit event and the metric labels all say which upstream,
which method, which tool, resource or prompt, and which request id a check was about. They
read it here, so the three can never describe one check three ways.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from policy_service.request.model import A2aRequest, CallKind, McpRequest
from policy_service.telemetry.record import CheckRecord

NAMED_KINDS = (CallKind.TOOL, CallKind.RESOURCE, CallKind.PROMPT)


@dataclass(frozen=True, slots=True)
class CheckFacts:
    upstream: str | None = None  # the upstream's name
    route_tag: str | None = None  # Envoy's tag, when it named no upstream of the bundle
    protocol: str | None = None  # "mcp", "a2a" or "http"
    method: str | None = None  # the first call's MCP method, or the A2A method
    target_kind: CallKind | None = None  # of the first call that names a tool, resource, prompt
    target: str | None = None  # that name
    request_id: str | None = None  # the first call's JSON-RPC id, as text
    mcp_protocol_version: str | None = None
    mcp_session_id: str | None = None  # a session_reference, never the id itself
    batch_size: int = 0  # the number of calls of an MCP batch; 0 when not a batch


def session_reference(session_id: str) -> str:
    """What spans and audit events say of a session: the same for each of its requests, so
    they can be followed, but not the id, which lets whoever holds it into the session on
    an upstream whose sessions the gateway does not bind to their principal."""
    return "sha256:" + hashlib.sha256(session_id.encode()).hexdigest()[:32]


def facts_of(record: CheckRecord) -> CheckFacts:
    upstream = record.upstream
    if upstream is None:
        return CheckFacts(route_tag=record.route_tag)
    name, protocol = upstream.name, upstream.protocol.value
    parsed = record.parsed
    if isinstance(parsed, A2aRequest):
        request_id = None if parsed.request_id is None else str(parsed.request_id)
        return CheckFacts(name, None, protocol, parsed.method, request_id=request_id)
    if not isinstance(parsed, McpRequest):
        return CheckFacts(name, None, protocol)
    first = parsed.calls[0] if parsed.calls else None
    named = next((call for call in parsed.calls if call.kind in NAMED_KINDS), None)
    return CheckFacts(
        name,
        None,
        protocol,
        method=first.method if first is not None else None,
        target_kind=named.kind if named is not None else None,
        target=named.name if named is not None else None,
        request_id=(
            str(first.request_id) if first is not None and first.request_id is not None else None
        ),
        mcp_protocol_version=parsed.protocol_version,
        mcp_session_id=session_reference(parsed.session_id) if parsed.session_id else None,
        batch_size=len(parsed.calls) if parsed.is_batch else 0,
    )
