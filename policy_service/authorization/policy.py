"""May they: per-upstream and per-rule scopes, client lists, default deny.

Semantics, in the order they apply:

1. The upstream's client list must admit the principal.
2. Each call in the request (an MCP batch has several; an A2A request has one) is matched
   against the upstream's rules in order; the first rule whose target matches decides.
   No matching rule means deny (default deny). A ``deny`` rule refuses. A rule's client list
   must admit the principal.
3. The principal must hold the upstream's ``required_scopes`` plus the matching rule's
   ``scopes``, for every call. When only scopes are missing the refusal names *all* the
   scopes the operation needs (MCP 2026-07-28: one challenge with every needed scope).

Requests with no calls (an MCP GET stream or DELETE, a plain HTTP upstream) and JSON-RPC
responses a client posts back need only the upstream-level checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter

from policy_service.bundles.model import CompiledRule, Effect, UpstreamPolicy
from policy_service.identity.principal import Principal
from policy_service.request.model import (
    A2aRequest,
    CallKind,
    JsonRpcCall,
    JsonRpcId,
    McpRequest,
    request_id_of,
)


class RefusalReason(StrEnum):
    CLIENT_NOT_ALLOWED = "client_not_allowed"
    DENIED_BY_RULE = "denied_by_rule"
    NO_MATCHING_RULE = "no_matching_rule"
    INSUFFICIENT_SCOPE = "insufficient_scope"


@dataclass(frozen=True, slots=True)
class Granted:
    rules: tuple[str, ...]  # the rule that admitted each call, in order


@dataclass(frozen=True, slots=True)
class Refused:
    reason: RefusalReason
    rule: str | None = None
    required_scopes: tuple[str, ...] = ()  # every scope the operation needs, sorted
    missing_scopes: tuple[str, ...] = ()
    request_id: JsonRpcId = None  # the refused call's id, to echo


PolicyOutcome = Granted | Refused


def authorize(
    upstream: UpstreamPolicy,
    principal: Principal,
    request: McpRequest | A2aRequest | None,
) -> PolicyOutcome:
    if not upstream.clients.admits(principal):
        return Refused(RefusalReason.CLIENT_NOT_ALLOWED, request_id=request_id_of(request))

    needed = set(upstream.required_scopes)
    admitted: list[str] = []
    first_short_id: JsonRpcId = None
    short = False
    for target_kind, target_name, request_id in _targets(request):
        rule = _first_matching_rule(upstream.rules, target_kind, target_name)
        if rule is None:
            return Refused(RefusalReason.NO_MATCHING_RULE, request_id=request_id)
        if rule.effect is Effect.DENY:
            return Refused(RefusalReason.DENIED_BY_RULE, rule=rule.name, request_id=request_id)
        if not rule.clients.admits(principal):
            return Refused(RefusalReason.CLIENT_NOT_ALLOWED, rule=rule.name, request_id=request_id)
        if not (rule.scopes <= principal.scopes) and not short:
            short, first_short_id = True, request_id
        needed.update(rule.scopes)
        admitted.append(rule.name)

    missing = needed - principal.scopes
    if missing:
        return Refused(
            RefusalReason.INSUFFICIENT_SCOPE,
            required_scopes=tuple(sorted(needed)),
            missing_scopes=tuple(sorted(missing)),
            request_id=first_short_id if short else request_id_of(request),
        )
    return Granted(tuple(admitted))


# A target is (kind, name): kind is a CallKind for MCP or "a2a" for an A2A method.
_A2A = "a2a"


def _targets(
    request: McpRequest | A2aRequest | None,
) -> list[tuple[str, str, JsonRpcId]]:
    if isinstance(request, A2aRequest):
        return [(_A2A, request.method, request.request_id)]
    if isinstance(request, McpRequest):
        return [
            (call.kind, _call_name(call), call.request_id)
            for call in request.calls
            if call.kind is not CallKind.RESPONSE
        ]
    return []


def _call_name(call: JsonRpcCall) -> str:
    if call.kind is CallKind.METHOD:
        return call.method or ""
    return call.name or ""


# Which of a rule's matchers a target kind is matched against.
_MATCHER_OF = {
    CallKind.TOOL: attrgetter("tools"),
    CallKind.RESOURCE: attrgetter("resources"),
    CallKind.PROMPT: attrgetter("prompts"),
    CallKind.METHOD: attrgetter("methods"),
    _A2A: attrgetter("a2a_methods"),
}


def _first_matching_rule(
    rules: tuple[CompiledRule, ...], kind: str, name: str
) -> CompiledRule | None:
    matcher_of = _MATCHER_OF[kind]
    for rule in rules:
        if matcher_of(rule).matches(name):
            return rule
    return None
