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
from policy_service.responses.plan import ResponsePlan


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
    SESSION_GONE = "session_gone"  # 404, always: a session not the caller's, ended or unknown
    RESPONSE_STATE_UNAVAILABLE = "response_state_unavailable"  # 503: bindings and pins unreadable
    INTERNAL = "internal"  # 503: our own fault; fail closed


class Challenge(StrEnum):
    """The ``WWW-Authenticate`` a denial carries (RFC 6750 section 3)."""

    NONE = "none"  # no challenge: the credential is not what is wrong
    BEARER = "bearer"  # no error code: no credential was sent
    INVALID_TOKEN = "invalid_token"  # noqa: S105 (an RFC 6750 error code, not a secret)
    INVALID_REQUEST = "invalid_request"
    INSUFFICIENT_SCOPE = "insufficient_scope"


class GrpcStatus(StrEnum):
    """The CheckResponse status Envoy sees (it only tells allow from deny; logs read it)."""

    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"


@dataclass(frozen=True, slots=True)
class KindAnswer:
    """How one kind of denial reaches the client and Envoy."""

    http_status: int
    grpc_status: GrpcStatus
    # JSON-RPC error code. JSON-RPC reserves -32768..-32000 and MCP 2026-07-28 forbids
    # unknown codes in -32020..-32099, so gateway refusals use the HTTP status as the code:
    # outside the reserved range and legal in every revision. A parser's own code (-32700,
    # -32600, ...) or a revision's rate-limit code overrides it per denial.
    jsonrpc_code: int
    challenge: Challenge


_DENIED = GrpcStatus.PERMISSION_DENIED
# One row per kind: status, gRPC status, JSON-RPC code and challenge, decided here only.
ANSWERS: Mapping[DenyKind, KindAnswer] = {
    DenyKind.MISSING_CREDENTIAL: KindAnswer(401, GrpcStatus.UNAUTHENTICATED, 401, Challenge.BEARER),
    DenyKind.INVALID_CREDENTIAL: KindAnswer(
        401, GrpcStatus.UNAUTHENTICATED, 401, Challenge.INVALID_TOKEN
    ),
    DenyKind.INVALID_REQUEST: KindAnswer(400, _DENIED, -32600, Challenge.INVALID_REQUEST),
    DenyKind.INSUFFICIENT_SCOPE: KindAnswer(403, _DENIED, 403, Challenge.INSUFFICIENT_SCOPE),
    DenyKind.FORBIDDEN: KindAnswer(403, _DENIED, 403, Challenge.NONE),
    DenyKind.MALFORMED: KindAnswer(400, _DENIED, 403, Challenge.NONE),
    DenyKind.BAD_ORIGIN: KindAnswer(403, _DENIED, 403, Challenge.NONE),
    DenyKind.NO_UPSTREAM: KindAnswer(404, _DENIED, 404, Challenge.NONE),
    # The operator's Envoy routes and bundle disagree (typically a route deployed before the
    # bundle that names its upstream): a fault of the gateway, not of the request, and one
    # that a retry after the rollout fixes. A 404 would tell clients the endpoint is gone,
    # and MCP clients read a 404 as "session expired, start over".
    DenyKind.UNKNOWN_UPSTREAM: KindAnswer(503, _DENIED, 503, Challenge.NONE),
    DenyKind.RATE_LIMITED: KindAnswer(429, _DENIED, 429, Challenge.NONE),
    DenyKind.LIMIT_STORE_UNAVAILABLE: KindAnswer(503, _DENIED, 503, Challenge.NONE),
    # MCP clients read a 404 on a session as "gone, initialize again": the one answer that
    # puts a client whose session was refused back on its feet, and never in band (a
    # 200 + JSON-RPC error would keep the client on a session it can never use).
    DenyKind.SESSION_GONE: KindAnswer(404, _DENIED, 404, Challenge.NONE),
    DenyKind.RESPONSE_STATE_UNAVAILABLE: KindAnswer(503, _DENIED, 503, Challenge.NONE),
    DenyKind.INTERNAL: KindAnswer(503, _DENIED, 503, Challenge.NONE),
}


@dataclass(frozen=True, slots=True)
class Allow:
    upstream: UpstreamPolicy
    principal: Principal | None  # None for public documents served by the upstream
    reason: str  # "allowed" or "public"
    rules: tuple[str, ...] = ()
    headers_to_set: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()  # added to the upstream's answer
    response_plan: ResponsePlan | None = None  # the answer needs the response side


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


@dataclass(frozen=True, slots=True)
class DenialContext:
    """What every denial of one check shares, derived once per check: the upstream, the
    request id to echo, and whether the answer is a JSON-RPC error."""

    upstream: UpstreamPolicy | None = None
    request_id: JsonRpcId = None
    jsonrpc: bool = False

    def deny(self, kind: DenyKind, reason: str, message: str, **fields: Any) -> Deny:
        return Deny(
            kind,
            reason,
            message,
            upstream=self.upstream,
            request_id=fields.pop("request_id", self.request_id),
            jsonrpc=self.jsonrpc,
            **fields,
        )
