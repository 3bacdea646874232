"""May they: per-upstream and per-rule scopes, client lists, default deny.

Semantics, in the order they apply:

1. The upstream's client list must admit the principal.
2. Each call in the request (an MCP batch has several; an A2A request has one) is matched
   against the upstream's rules in order; the first rule whose target matches, and whose
   ``when`` condition holds, decides. No such rule means deny (default deny), reported as
   ``condition_not_met`` when an *allow* rule's target matched but its condition kept it
   out (a deny rule kept out by its condition explains nothing about the refusal: that is
   ``no_matching_rule``). A ``deny`` rule refuses. A rule's client list must admit the
   principal. A condition that fails to evaluate never lets a call in: it is false for
   allow rules, true for deny rules; and when such a failure decides the refusal (a deny
   rule that applied because its condition failed, or an allow rule that a failure kept
   out, with nothing after it taking the call) the reason is ``condition_error``, not
   ``denied_by_rule`` or ``condition_not_met``: a broken condition is told apart from a
   condition that said no.
3. The principal must hold the upstream's ``required_scopes`` plus the matching rule's
   ``scopes``, for every call. When only scopes are missing the refusal names *all* the
   scopes the operation needs (MCP 2026-07-28: one challenge with every needed scope).

Dry-run rules are left out of the enforced decision; ``pipeline`` evaluates them apart and
records what they would have decided.

Requests with no calls (an MCP GET stream or DELETE, a plain HTTP upstream) and JSON-RPC
responses a client posts back need only the upstream-level checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from policy_service.identity.principal import Principal
from policy_service.policy.conditions import ConditionFailure, ConditionInputs
from policy_service.policy.model import CompiledRule, Effect, UpstreamPolicy
from policy_service.request.model import (
    A2aRequest,
    CallTarget,
    HttpRequest,
    JsonRpcId,
    McpRequest,
    call_targets,
    request_id_of,
)


class RefusalReason(StrEnum):
    CLIENT_NOT_ALLOWED = "client_not_allowed"
    DENIED_BY_RULE = "denied_by_rule"
    NO_MATCHING_RULE = "no_matching_rule"
    CONDITION_NOT_MET = "condition_not_met"
    CONDITION_ERROR = "condition_error"
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
    # For condition_error: why the condition failed (names keys and types, never values).
    condition_failure: str | None = None


PolicyOutcome = Granted | Refused


@dataclass(frozen=True, slots=True)
class RuleStep:
    """How one rule fared against one call, for ``explain``."""

    rule: CompiledRule
    target_matched: bool
    condition: bool | ConditionFailure | None = None  # None: no condition, or not reached
    applies: bool = False


class _ConditionInputs:
    """Condition inputs for one check, built only if a condition asks, and once."""

    __slots__ = ("_http", "_principal", "_principal_view", "_upstream")

    def __init__(
        self, upstream: UpstreamPolicy, principal: Principal, http: HttpRequest | None
    ) -> None:
        self._upstream = upstream
        self._principal = principal
        self._http = http
        self._principal_view: Mapping[str, Any] | None = None

    def for_target(self, target: CallTarget) -> ConditionInputs:
        principal = self._principal
        if self._principal_view is None:
            self._principal_view = {
                "subject": principal.subject,
                "client_id": principal.client_id or "",
                "issuer": principal.issuer,
                "credential": principal.credential.value,
                "scopes": sorted(principal.scopes),
            }
        return ConditionInputs(
            args=target.arguments or {},
            claims=principal.claims,
            principal=self._principal_view,
            request={
                "upstream": self._upstream.name,
                "protocol": self._upstream.protocol.value,
                "method": target.method,
                "target": target.name,
                "http_method": self._http.method if self._http is not None else "POST",
                "path": self._http.path if self._http is not None else "",
            },
        )


def condition_inputs(
    upstream: UpstreamPolicy, principal: Principal, http: HttpRequest | None, target: CallTarget
) -> ConditionInputs:
    """What the conditions of ``upstream`` read for ``target``, as a check builds it."""
    return _ConditionInputs(upstream, principal, http).for_target(target)


def authorize(
    upstream: UpstreamPolicy,
    principal: Principal,
    request: McpRequest | A2aRequest | None,
    *,
    http: HttpRequest | None = None,
    rules: tuple[CompiledRule, ...] | None = None,
    steps: list[tuple[CallTarget, RuleStep]] | None = None,
) -> PolicyOutcome:
    """Decide on ``request``; conditions read the HTTP method and path from ``http``.
    ``rules`` defaults to the enforced ones (dry-run rules left
    out); ``steps``, when given, collects how each rule fared, for ``explain``."""
    if not upstream.clients.admits(principal):
        return Refused(RefusalReason.CLIENT_NOT_ALLOWED, request_id=request_id_of(request))

    rules = upstream.enforced_rules if rules is None else rules
    inputs = _ConditionInputs(upstream, principal, http)
    needed = set(upstream.required_scopes)
    admitted: list[str] = []
    first_short_id: JsonRpcId = None
    short_rule: str | None = None  # the first rule whose scopes the caller lacks
    short = False
    targets = call_targets(request)
    for target in targets:
        request_id = target.request_id
        decided = _deciding_rule(rules, target, inputs, steps)
        rule, held_back = decided.rule, decided.held_back
        if rule is None:
            if held_back is not None:
                if decided.held_back_failure is not None:
                    return Refused(
                        RefusalReason.CONDITION_ERROR,
                        rule=held_back.name,
                        request_id=request_id,
                        condition_failure=decided.held_back_failure,
                    )
                return Refused(
                    RefusalReason.CONDITION_NOT_MET, rule=held_back.name, request_id=request_id
                )
            return Refused(RefusalReason.NO_MATCHING_RULE, request_id=request_id)
        if rule.effect is Effect.DENY:
            if decided.failure is not None:
                return Refused(
                    RefusalReason.CONDITION_ERROR,
                    rule=rule.name,
                    request_id=request_id,
                    condition_failure=decided.failure,
                )
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


@dataclass(frozen=True, slots=True)
class _Decided:
    rule: CompiledRule | None  # the rule that applies, if any
    failure: str | None = None  # its condition failed (so it applied: a deny rule)
    held_back: CompiledRule | None = None  # the first allow rule its condition kept out
    held_back_failure: str | None = None  # that condition failed rather than said no


def _deciding_rule(
    rules: tuple[CompiledRule, ...],
    target: CallTarget,
    inputs: _ConditionInputs,
    steps: list[tuple[CallTarget, RuleStep]] | None,
) -> _Decided:
    """The first rule that applies to ``target``, and the first one whose target matched
    but whose condition kept it out (named when nothing applies)."""
    held_back: CompiledRule | None = None
    held_back_failure: str | None = None
    for rule in rules:
        if not rule.targets.matches(target):
            if steps is not None:
                steps.append((target, RuleStep(rule, target_matched=False)))
            continue
        result: bool | ConditionFailure | None = None
        applies = True
        if rule.condition is not None:
            result = rule.condition.evaluate(inputs.for_target(target))
            # A failed condition must never let a call in: it keeps an allow rule out and
            # lets a deny rule refuse.
            applies = result if isinstance(result, bool) else rule.effect is Effect.DENY
        if steps is not None:
            steps.append((target, RuleStep(rule, True, result, applies)))
        failure = result.reason if isinstance(result, ConditionFailure) else None
        if applies:
            return _Decided(rule, failure, held_back, held_back_failure)
        if rule.effect is Effect.ALLOW and held_back is None:
            held_back = rule  # an allow rule that would have applied but for its condition
            held_back_failure = failure
    return _Decided(None, None, held_back, held_back_failure)
