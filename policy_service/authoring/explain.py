"""``policy-service explain``: why one request gets the answer it gets.

The decision comes from the same ``CheckPipeline.check`` the service runs; the rule walk beside it
is the same ``authorize`` with its steps recorded. Limits are shown with their buckets'
state: fresh buckets by default, or the live ones in Redis, read with a take of zero tokens
so explaining a request never spends anybody's budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from policy_service.authoring.cases import Call, Caller
from policy_service.authoring.condition_view import ConditionView, view_condition
from policy_service.authoring.runner import Outcome, http_request_for, outcome_of
from policy_service.authoring.runner import principal_for as case_principal
from policy_service.authorization.policy import RuleStep, authorize, condition_inputs
from policy_service.identity.principal import Principal
from policy_service.pipeline import CheckPipeline, GivenPrincipal
from policy_service.policy.conditions import ConditionFailure
from policy_service.policy.model import CompiledBundle, CompiledRule, Effect
from policy_service.ratelimits.keys import claims_for
from policy_service.ratelimits.limiter import LimitState, RateLimiter, Verdict
from policy_service.ratelimits.store import InProcessStore
from policy_service.request.model import CallTarget, call_targets
from policy_service.state import BundleState
from policy_service.telemetry.record import CheckRecord


@dataclass(frozen=True, slots=True)
class LimitView:
    state: LimitState
    bucket: str  # the bucket key, naming what it counts by
    cost: int


@dataclass(frozen=True, slots=True)
class Explanation:
    bundle: CompiledBundle
    call: Call
    outcome: Outcome
    principal: Principal | None
    steps: tuple[tuple[CallTarget, RuleStep], ...]
    limits: tuple[LimitView, ...]
    limits_source: str  # "fresh buckets" or "live buckets"
    limits_unavailable: str | None = None
    # Each evaluated condition taken apart, by the index of its step.
    conditions: Mapping[int, ConditionView] = field(default_factory=dict)


async def explain(
    bundle: CompiledBundle,
    caller: Caller | None,
    call: Call,
    *,
    live_limiter: RateLimiter | None = None,
) -> Explanation:
    state = BundleState.from_bundle(bundle)
    if caller is not None and caller.token is not None:
        await state.jwt.start()
    try:
        upstream = bundle.by_name[call.upstream]
        request = http_request_for(upstream, call, caller)
        given = case_principal(bundle, caller) if caller is not None else None
        record = CheckRecord.new()
        # Fresh in-process buckets for the decision: the live ones are only ever read.
        gateway = (
            CheckPipeline(state, identity=GivenPrincipal(given)) if given else CheckPipeline(state)
        )
        decision = await gateway.check(request, record)
        outcome = outcome_of(decision, record)
        principal = record.principal
        steps: list[tuple[CallTarget, RuleStep]] = []
        views: tuple[LimitView, ...] = ()
        unavailable = None
        conditions: dict[int, ConditionView] = {}
        if principal is not None:
            authorize(upstream, principal, record.parsed, http=request, steps=steps)
            redact = bundle.audit.redact_keys
            for index, (target, step) in enumerate(steps):
                if step.condition is not None and step.rule.condition is not None:
                    inputs = condition_inputs(upstream, principal, request, target)
                    conditions[index] = view_condition(step.rule.condition, inputs, redact)
            targets = call_targets(record.parsed)
            claims = claims_for(bundle.limits, upstream.name, principal, targets)
            if claims:
                limiter = live_limiter or RateLimiter(InProcessStore())
                peeked = await limiter.check([replace(claim, cost=0) for claim in claims])
                if peeked.verdict in (Verdict.FAILED_OPEN, Verdict.FAILED_CLOSED):
                    unavailable = peeked.store_error or "store unavailable"
                by_limit = {view.limit.name: view for view in peeked.states}
                views = tuple(
                    LimitView(by_limit[claim.limit.name], claim.key, claim.cost)
                    for claim in claims
                    if claim.limit.name in by_limit
                )
        return Explanation(
            bundle,
            call,
            outcome,
            principal,
            tuple(steps),
            views,
            "live buckets" if live_limiter is not None else "fresh buckets",
            unavailable,
            conditions,
        )
    finally:
        await state.jwt.aclose()


def render(explanation: Explanation) -> str:
    """The report, in the order a reader asks: what happened, who, what, which rule, limits."""
    outcome = explanation.outcome
    call = explanation.call
    upstream = explanation.bundle.by_name[call.upstream]
    lines = [f"decision   {outcome.describe()}"]
    if outcome.message:
        lines.append(f"message    {outcome.message}")
    lines.append(f"bundle     revision {explanation.bundle.revision}")
    lines.append(f"upstream   {upstream.name} ({upstream.protocol}), route {upstream.path_prefix}")
    lines.append(f"caller     {_caller_line(explanation.principal)}")
    lines.append(f"call       {call.kind} {call.target}")
    if upstream.required_scopes:
        lines.append(f"upstream needs scopes: {' '.join(sorted(upstream.required_scopes))}")
    if outcome.missing_scopes:
        lines.append(f"missing scopes: {' '.join(outcome.missing_scopes)}")
    if explanation.steps:
        lines.append("rules (in order, until one applies)")
        lines.extend(_step_lines(explanation.steps, explanation.principal, explanation.conditions))
    elif explanation.principal is not None and upstream.rules:
        lines.append("rules      not reached")
    for dry_run in outcome.dry_runs:
        verdict = "agrees" if dry_run.agrees else "DIFFERS from the enforced decision"
        lines.append(
            f"dry run    {dry_run.source} {dry_run.name} would {dry_run.decision} "
            f"({dry_run.reason}); {verdict}"
        )
    lines.extend(_limit_lines(explanation))
    return "\n".join(lines)


def _caller_line(principal: Principal | None) -> str:
    if principal is None:
        return "none (no credential, or it was refused)"
    client = f", client {principal.client_id}" if principal.client_id else ""
    scopes = " ".join(sorted(principal.scopes)) or "(none)"
    return (
        f"{principal.subject} via {principal.credential} (issuer {principal.issuer}{client}); "
        f"scopes: {scopes}"
    )


def _step_lines(
    steps: Sequence[tuple[CallTarget, RuleStep]],
    principal: Principal | None,
    conditions: Mapping[int, ConditionView],
) -> list[str]:
    lines: list[str] = []
    for position, (_, step) in enumerate(steps, start=1):
        rule = step.rule
        if not step.target_matched:
            lines.append(f"  {position}. {rule.name}: target does not match")
            continue
        parts = [f"  {position}. {rule.name}: target matches"]
        if rule.condition is not None:
            parts.append(f"when {_condition_text(step.condition)}")
        if step.applies:
            parts.append(f"-> applies ({_effect_text(rule, principal)})")
        else:
            parts.append("-> does not apply")
        lines.append(", ".join(parts))
        view = conditions.get(position - 1)
        if view is not None:
            lines.extend(_condition_lines(view))
    return lines


def _condition_lines(view: ConditionView) -> list[str]:
    lines = []
    if view.values:
        read = ", ".join(f"{name} = {value}" for name, value in view.values)
        lines.append(f"       read: {read}")
    for index, part in enumerate(view.parts):
        decided = "  <- decides" if index == view.deciding else ""
        lines.append(
            f"       {view.operator if index else '  '} {part.source}: "
            f"{_condition_text(part.result)}{decided}"
        )
    return lines


def _condition_text(result: bool | ConditionFailure | None) -> str:
    if isinstance(result, ConditionFailure):
        return f"failed ({result.reason})"
    return "true" if result else "false"


def _effect_text(rule: CompiledRule, principal: Principal | None) -> str:
    if rule.effect is Effect.DENY:
        return "deny"
    if not rule.scopes:
        return "allow, no scopes needed"
    held = principal.scopes if principal is not None else frozenset()
    needs = " ".join(
        f"{scope} {'held' if scope in held else 'MISSING'}" for scope in sorted(rule.scopes)
    )
    return f"allow, needs {needs}"


def _limit_lines(explanation: Explanation) -> list[str]:
    if explanation.limits_unavailable is not None:
        return [f"limits     could not be read: {explanation.limits_unavailable}"]
    if not explanation.limits:
        return ["limits     none apply"]
    lines = [f"limits ({explanation.limits_source})"]
    for view in explanation.limits:
        limit = view.state.limit
        shadow = ", shadow" if limit.shadow else ""
        state = f"{view.state.remaining} of {limit.burst} left"
        if view.state.remaining < view.cost:
            state += (
                ", too few for this call: it would be refused"
                if not limit.shadow
                else (", too few for this call (shadow: counted, not refused)")
            )
        lines.append(
            f"  {limit.name}: {limit.rate}, burst "
            f"{limit.burst}, cost {view.cost}{shadow}; bucket {view.bucket}: {state}"
        )
    return lines
