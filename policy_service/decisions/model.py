"""The outcome of one check, before it becomes an Envoy proto.

A denial is a value the pipeline returns, never an exception: anything that is not an
``Allow`` reaches the client as a refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from policy_service.identity.principal import Principal
from policy_service.policy.model import UpstreamPolicy
from policy_service.request.model import JsonRpcId


class DenyKind(StrEnum):
    MISSING_CREDENTIAL = "missing_credential"  # 401, challenge without error=
    INVALID_CREDENTIAL = "invalid_credential"  # 401, error="invalid_token"
    INVALID_REQUEST = "invalid_request"  # 400, error="invalid_request" (ambiguous credentials)
    INSUFFICIENT_SCOPE = "insufficient_scope"  # 403 (or 200 + JSON-RPC error)
    FORBIDDEN = "forbidden"  # 403: no scope would help
    MALFORMED = "malformed"  # 400: cannot be parsed well enough to authorize
    BAD_ORIGIN = "bad_origin"  # 403: Origin present and not allowed (MCP transport MUST)
    NO_UPSTREAM = "no_upstream"  # 404: no upstream serves this path
    UNKNOWN_UPSTREAM = "unknown_upstream"  # 503: Envoy's route tag names no upstream we know
    RATE_LIMITED = "rate_limited"  # 429 + Retry-After and RateLimit fields
    LIMIT_STORE_UNAVAILABLE = "limit_store_unavailable"  # 503: a fail-closed limit's store is down
    INTERNAL = "internal"  # 503: our own fault; fail closed


@dataclass(frozen=True, slots=True)
class Allow:
    upstream: UpstreamPolicy
    principal: Principal | None  # None for public documents served by the upstream
    reason: str  # "allowed" or "public"
    rules: tuple[str, ...] = ()
    headers_to_set: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()  # added to the upstream's answer


@dataclass(frozen=True, slots=True)
class Deny:
    kind: DenyKind
    reason: str  # short snake_case code: metric label, log field, data.reason
    message: str  # one human sentence; never a token, claim value or key
    upstream: UpstreamPolicy | None = None
    request_id: JsonRpcId = None
    jsonrpc: bool = False  # the request was JSON-RPC: answer with a JSON-RPC error body
    jsonrpc_code: int | None = None  # overrides the kind's code (the parser's, a revision's)
    http_status: int | None = None  # for MALFORMED: the parser's status
    required_scopes: tuple[str, ...] = ()
    missing_scopes: tuple[str, ...] = ()
    rule: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # extra answer headers (Retry-After, RateLimit)
    details: Mapping[str, Any] = field(default_factory=dict)  # extra JSON-RPC error data


@dataclass(frozen=True, slots=True)
class Serve:
    """The gateway answers itself (RFC 9728 metadata): a 200 that never reaches an upstream."""

    body: bytes
    content_type: str = "application/json"
    reason: str = "metadata"


Decision = Allow | Deny | Serve
