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

from policy_service.bundles.model import CompiledRule, Effect, UpstreamPolicy
from policy_service.identity.principal import Principal
from policy_service.request.model import (
    A2aRequest,
    CallTarget,
    JsonRpcId,
    McpRequest,
    call_targets,
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
    targets: tuple[CallTarget, ...] = ()  # the calls decided on, for the phases after this


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
    short_rule: str | None = None  # the first rule whose scopes the caller lacks
    short = False
    targets = call_targets(request)
    for target in targets:
        request_id = target.request_id
        rule = first_matching_rule(upstream.rules, target)
        if rule is None:
            return Refused(RefusalReason.NO_MATCHING_RULE, request_id=request_id)
        if rule.effect is Effect.DENY:
            return Refused(RefusalReason.DENIED_BY_RULE, rule=rule.name, request_id=request_id)
        if not rule.clients.admits(principal):
            return Refused(RefusalReason.CLIENT_NOT_ALLOWED, rule=rule.name, request_id=request_id)
        if not (rule.scopes <= principal.scopes) and not short:
            short, first_short_id, short_rule = True, request_id, rule.name
        needed.update(rule.scopes)
        admitted.append(rule.name)

    missing = needed - principal.scopes
    if missing:
        return Refused(
            RefusalReason.INSUFFICIENT_SCOPE,
            rule=short_rule,
            required_scopes=tuple(sorted(needed)),
            missing_scopes=tuple(sorted(missing)),
            request_id=first_short_id if short else request_id_of(request),
        )
    return Granted(tuple(admitted), targets)


def first_matching_rule(rules: tuple[CompiledRule, ...], target: CallTarget) -> CompiledRule | None:
    for rule in rules:
        if rule.targets.matches(target):
            return rule
    return None
