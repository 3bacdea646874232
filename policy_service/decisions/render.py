"""Turn a ``Deny`` or ``Serve`` into the HTTP answer the client sees (design.md section 3).

Pure: status, headers and body only. JSON-RPC error bodies echo the request id, because
MCP SDKs drop an error whose id matches no pending call and the call then hangs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from policy_service.decisions.model import ANSWERS, Challenge, Deny, DenyKind, Serve
from policy_service.policy.model import DenialStyle

# Before 2026-07-28 MCP let implementations use -32000..-32099, and -32029 is what MCP-land
# gateways answer a rate limit with; from 2026-07-28 that band is the spec's own, so the
# HTTP status is used as an application code instead (as ToolHive did).
_CODE_RATE_LIMITED_LEGACY = -32029
_FIRST_REVISION_WITHOUT_LEGACY_CODES = "2026-07-28"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    reason: str


def render_serve(serve: Serve) -> HttpAnswer:
    return HttpAnswer(
        200,
        (("content-type", serve.content_type), ("cache-control", "public, max-age=300")),
        serve.body,
        serve.reason,
    )


def render_deny(deny: Deny) -> HttpAnswer:
    headers: list[tuple[str, str]] = [("content-type", "application/json")]
    challenge = _challenge(deny)
    if challenge:
        headers.append(("www-authenticate", challenge))
    headers.extend(deny.headers)
    body = _jsonrpc_body(deny) if deny.jsonrpc else _problem_body(deny)
    return HttpAnswer(http_status_of(deny), tuple(headers), body, deny.reason)


def http_status_of(answer: Deny | Serve) -> int:
    """The status the client gets for a gateway answer."""
    if isinstance(answer, Serve):
        return 200
    if _answers_in_band(answer):
        # The upstream asked for 200 + JSON-RPC error: many MCP clients tear the session
        # down on any non-2xx, and a clear in-band error is better than a dead session.
        return 200
    if answer.kind is DenyKind.MALFORMED and answer.http_status:
        return answer.http_status
    return ANSWERS[answer.kind].http_status


def _answers_in_band(deny: Deny) -> bool:
    return (
        deny.kind in (DenyKind.INSUFFICIENT_SCOPE, DenyKind.FORBIDDEN)
        and deny.jsonrpc
        and deny.request_id is not None  # a notification has nobody waiting for an answer
        and deny.upstream is not None
        and deny.upstream.denial_style is DenialStyle.JSONRPC
    )


def _quote(value: str) -> str:
    # RFC 7235 quoted-string: escape backslash and double quote.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _challenge(deny: Deny) -> str | None:
    challenge = ANSWERS[deny.kind].challenge
    if challenge is Challenge.NONE:
        return None
    params: list[tuple[str, str]] = []
    if challenge is Challenge.INSUFFICIENT_SCOPE:
        params += [("error", "insufficient_scope"), ("scope", " ".join(deny.required_scopes))]
    elif challenge is not Challenge.BEARER:  # RFC 6750 3: no error code without a credential
        params += [("error", challenge.value), ("error_description", deny.reason)]
    if deny.upstream is not None:
        if deny.kind is DenyKind.MISSING_CREDENTIAL and deny.upstream.required_scopes:
            params.append(("scope", " ".join(sorted(deny.upstream.required_scopes))))
        params.append(("resource_metadata", deny.upstream.metadata_url))
    if not params:
        return "Bearer"
    return "Bearer " + ", ".join(f"{name}={_quote(value)}" for name, value in params)


def rate_limit_code(mcp_protocol_version: str | None) -> int:
    """The JSON-RPC code of a rate-limit answer for this MCP revision (None: not MCP)."""
    if mcp_protocol_version and mcp_protocol_version < _FIRST_REVISION_WITHOUT_LEGACY_CODES:
        return _CODE_RATE_LIMITED_LEGACY
    return ANSWERS[DenyKind.RATE_LIMITED].jsonrpc_code


def _code(deny: Deny) -> int:
    if deny.jsonrpc_code is not None:
        return deny.jsonrpc_code
    return ANSWERS[deny.kind].jsonrpc_code


def _data(deny: Deny) -> dict[str, Any]:
    data: dict[str, Any] = {"reason": deny.reason}
    if deny.required_scopes:
        data["scopes"] = list(deny.required_scopes)
        data["missing_scopes"] = list(deny.missing_scopes)
    if deny.rule and deny.upstream is not None and deny.upstream.expose_rule_names:
        # Only when the bundle says so: a rule's name tells the refused caller about the
        # policy. The audit event names it either way.
        data["rule"] = deny.rule
    if deny.upstream is not None and deny.kind in (
        DenyKind.MISSING_CREDENTIAL,
        DenyKind.INVALID_CREDENTIAL,
    ):
        data["resource_metadata"] = deny.upstream.metadata_url
    data.update(deny.details)
    return data


def _jsonrpc_body(deny: Deny) -> bytes:
    error = {"code": _code(deny), "message": deny.message, "data": _data(deny)}
    return json.dumps({"jsonrpc": "2.0", "id": deny.request_id, "error": error}).encode()


def _problem_body(deny: Deny) -> bytes:
    return json.dumps({"error": deny.reason, "message": deny.message, **_data(deny)}).encode()
