"""What the check tells the response processor about one allowed request.

The plan travels from the check to the response processor inside Envoy: the check puts
it in the ext_authz filter's dynamic metadata, and Envoy forwards that to the ext_proc
stream of the same request. Envoy is the only writer of dynamic metadata (a client can't
set it, and can't forge a plan), so the processor trusts what it reads there. A request
whose answer needs no work gets no plan, and Envoy's ext_proc filter, behind a matcher on
that metadata, is skipped for it: no stream opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from policy_service.identity.principal import CredentialKind, Principal
from policy_service.policy.responses import LIST_RESULT_KEYS, ResponsePolicy
from policy_service.request.model import JsonRpcId, McpRequest

# The key of the ext_authz dynamic metadata the plan travels under. Its presence is also
# what turns Envoy's ext_proc filter on for the request (the generated config's matcher,
# gateway.filters.RESPONSE_PLAN_KEY): a request without a plan opens no ext_proc stream.
PLAN_METADATA_KEY = "response_plan"


class SessionWork(StrEnum):
    NONE = "none"
    BIND = "bind"  # initialize: bind the session the upstream opens to the principal
    END = "end"  # DELETE: the binding ends when the upstream accepts it


@dataclass(frozen=True, slots=True)
class PlannedCall:
    request_id: JsonRpcId
    method: str
    name: str | None = None  # the tool of a tools/call


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    upstream: str
    decision_id: str
    calls: tuple[PlannedCall, ...] = ()
    session: SessionWork = SessionWork.NONE
    session_id: str | None = None  # the session a DELETE ends
    principal: Principal | None = None

    def to_metadata(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "upstream": self.upstream,
            "decision_id": self.decision_id,
            "calls": [[call.request_id, call.method, call.name] for call in self.calls],
            "session": self.session.value,
        }
        if self.session_id is not None:
            document["session_id"] = self.session_id
        principal = self.principal
        if principal is not None:
            document["principal"] = {
                "subject": principal.subject,
                "issuer": principal.issuer,
                "client_id": principal.client_id,
                "credential": principal.credential.value,
                "scopes": sorted(principal.scopes),
                "claims": dict(principal.claims),
            }
        # One string: a protobuf Struct would turn every integer claim into a double.
        return {PLAN_METADATA_KEY: orjson.dumps(document).decode()}

    @classmethod
    def from_metadata(cls, text: str) -> ResponsePlan:
        """The plan ``to_metadata`` wrote; ValueError when it is not one."""
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("the response plan is not JSON") from None
        if not isinstance(document, dict):
            raise ValueError("the response plan is not a JSON object")
        try:
            calls = tuple(
                PlannedCall(request_id, str(method), name)
                for request_id, method, name in document.get("calls", ())
            )
            principal = _principal(document.get("principal"))
            return cls(
                upstream=str(document["upstream"]),
                decision_id=str(document["decision_id"]),
                calls=calls,
                session=SessionWork(document.get("session", SessionWork.NONE)),
                session_id=document.get("session_id"),
                principal=principal,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the response plan is malformed ({type(exc).__name__})") from None

    def call_for(self, request_id: JsonRpcId) -> PlannedCall | None:
        for call in self.calls:
            if call.request_id == request_id and type(call.request_id) is type(request_id):
                return call
        return None


def _principal(document: Any) -> Principal | None:
    if document is None:
        return None
    if not isinstance(document, Mapping):
        raise TypeError("principal")
    return Principal(
        subject=str(document["subject"]),
        issuer=str(document["issuer"]),
        client_id=document.get("client_id"),
        scopes=frozenset(document.get("scopes", ())),
        credential=CredentialKind(document["credential"]),
        claims=document.get("claims") or {},
    )


def plan_response(
    policy: ResponsePolicy,
    upstream: str,
    http_method: str,
    parsed: McpRequest,
    principal: Principal,
    decision_id: str,
) -> ResponsePlan | None:
    """The plan for an allowed MCP request, or None when its answer needs no work."""
    if http_method == "DELETE":
        if policy.sessions.bind and parsed.session_id is not None:
            return ResponsePlan(
                upstream, decision_id, session=SessionWork.END, session_id=parsed.session_id
            )
        return None
    methods = policy.methods
    calls = tuple(
        PlannedCall(call.request_id, call.method, call.name)
        for call in parsed.calls
        if call.method in methods and call.request_id is not None
    )
    if not calls:
        return None
    binds = policy.sessions.bind and any(call.method == "initialize" for call in calls)
    # The principal travels only where the processor decides by it: lists are filtered
    # for it and sessions bound to it; a redacted tool result needs no one's identity.
    needs_principal = binds or any(call.method in LIST_RESULT_KEYS for call in calls)
    return ResponsePlan(
        upstream,
        decision_id,
        calls,
        session=SessionWork.BIND if binds else SessionWork.NONE,
        principal=principal if needs_principal else None,
    )
