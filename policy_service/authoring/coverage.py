"""How much of a bundle its policy tests exercise: the coverage ``policy-service test`` reports.

Gathered beside each case's decision, never on the service's path: after a case's calls the
runner walks the rules once more with ``authorize(..., steps=...)``, as ``explain`` does, and
reads what the checks recorded (dry-run records, rate-limit states). Three measures:

- A **rule** is covered when it decided a call of some case: it was the first rule that
  applied, whether it then admitted the call or refused it (a deny rule; an allow rule whose
  scopes or client list the caller failed). A dry-run rule is covered when a case recorded
  its would-be decision.
- A rule's **condition** (``when:``) is covered when it went both ways: some case saw it let
  the rule apply, and some case saw it keep the rule out (the call went on to later rules).
  A condition that fails to evaluate counts the way it acts, fail closed: as false for an
  allow rule, as true for a deny rule. Dry-run rules' conditions are read from the walk with
  the dry-run rules live, the one the pipeline makes to record them.
- A **limit** is covered when a case's call matched it (its bucket was asked), and is
  *exceeded* when some call found its bucket short (``rate_limited``; for a shadow limit, the
  refusal it records instead).

Every case counts, passed or failed: a failing case still ran the rules it reached.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policy_service.authorization.policy import RuleStep, authorize
from policy_service.policy.conditions import ConditionFailure
from policy_service.policy.model import CompiledBundle, Effect
from policy_service.request.model import CallTarget, HttpRequest
from policy_service.telemetry.record import CheckRecord

RuleAt = tuple[int, int]  # (upstream index, rule index) in the bundle


@dataclass(frozen=True, slots=True)
class ConditionSeen:
    """One evaluation of a rule's condition: whether the rule applied, whether it failed."""

    rule: RuleAt
    applied: bool
    failed: bool


@dataclass(frozen=True, slots=True)
class CaseTrace:
    """What one case exercised."""

    decided: frozenset[RuleAt] = frozenset()
    conditions: frozenset[ConditionSeen] = frozenset()
    # Limit name -> whether some call of the case found its bucket short.
    limits: Mapping[str, bool] = field(default_factory=dict)


def note_limits(seen: dict[str, bool], record: CheckRecord) -> None:
    """Fold one call's rate-limit states into ``seen`` (a case may repeat its call)."""
    if record.limits is not None:
        for state in record.limits.states:
            seen[state.limit.name] = seen.get(state.limit.name, False) or state.exceeded


def trace_case(
    bundle: CompiledBundle, request: HttpRequest, record: CheckRecord, limits: dict[str, bool]
) -> CaseTrace:
    """What the case whose last check filled ``record`` exercised. Nothing of the rules when
    the check stopped before them (no upstream, no credential)."""
    upstream, principal = record.upstream, record.principal
    if upstream is None or principal is None:
        return CaseTrace(limits=limits)
    at = next(index for index, known in enumerate(bundle.upstreams) if known is upstream)
    steps: list[tuple[CallTarget, RuleStep]] = []
    authorize(upstream, principal, record.parsed, http=request, steps=steps)
    if upstream.dry_run_rules:
        live: list[tuple[CallTarget, RuleStep]] = []
        authorize(
            upstream, principal, record.parsed, http=request, rules=upstream.rules, steps=live
        )
        steps.extend(step for step in live if step[1].rule.dry_run)
    # Compiled rules are compared by identity: two rules may be equal field for field.
    position = {id(rule): index for index, rule in enumerate(upstream.rules)}
    decided = {
        (at, position[id(step.rule)]) for _, step in steps if step.applies and not step.rule.dry_run
    }
    recorded = {dry.name for dry in record.dry_runs if dry.source == "rule"}
    decided.update(
        (at, index)
        for index, rule in enumerate(upstream.rules)
        if rule.dry_run and rule.name in recorded
    )
    conditions = frozenset(
        ConditionSeen(
            (at, position[id(step.rule)]),
            step.applies,
            isinstance(step.condition, ConditionFailure),
        )
        for _, step in steps
        if step.target_matched and step.rule.condition is not None
    )
    return CaseTrace(frozenset(decided), conditions, limits)


# --- the report ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConditionCoverage:
    applied: int  # cases in which it let its rule apply
    passed: int  # cases in which it kept its rule out
    failed: int  # cases in which it failed to evaluate (counted in one of the two above)

    @property
    def covered(self) -> bool:
        return bool(self.applied and self.passed)

    @property
    def missing(self) -> str | None:
        if not self.applied and not self.passed:
            return "never evaluated (no case reached the rule)"
        if not self.applied:
            return "never true (no case made the rule apply)"
        if not self.passed:
            return "never false (no case got past the rule)"
        return None


@dataclass(frozen=True, slots=True)
class RuleCoverage:
    path: str  # upstreams[0].rules[2]
    name: str
    effect: Effect
    dry_run: bool
    decided: int  # cases it decided
    condition: ConditionCoverage | None


@dataclass(frozen=True, slots=True)
class UpstreamCoverage:
    name: str
    path: str
    rules: tuple[RuleCoverage, ...]

    @property
    def rules_covered(self) -> int:
        return sum(1 for rule in self.rules if rule.decided)

    @property
    def conditions(self) -> tuple[ConditionCoverage, ...]:
        return tuple(rule.condition for rule in self.rules if rule.condition is not None)


@dataclass(frozen=True, slots=True)
class LimitCoverage:
    path: str  # limits[1]
    name: str
    shadow: bool
    matched: int  # cases whose call matched it
    exceeded: int  # cases in which a call found its bucket short


@dataclass(frozen=True, slots=True)
class Uncovered:
    path: str
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.path} '{self.name}' {self.message}"


@dataclass(frozen=True, slots=True)
class Coverage:
    upstreams: tuple[UpstreamCoverage, ...]
    limits: tuple[LimitCoverage, ...]

    @property
    def rules(self) -> tuple[int, int]:
        """(covered, total)."""
        return (
            sum(upstream.rules_covered for upstream in self.upstreams),
            sum(len(upstream.rules) for upstream in self.upstreams),
        )

    @property
    def conditions(self) -> tuple[int, int]:
        seen = [condition for upstream in self.upstreams for condition in upstream.conditions]
        return sum(1 for condition in seen if condition.covered), len(seen)

    @property
    def rules_percent(self) -> float:
        covered, total = self.rules
        return 100.0 if not total else round(100.0 * covered / total, 1)

    def below(self, minimum: float) -> bool:
        """Whether rule coverage is under ``minimum`` percent (compared exactly, not rounded)."""
        covered, total = self.rules
        return total > 0 and covered * 100 < minimum * total

    def uncovered(self) -> list[Uncovered]:
        found: list[Uncovered] = []
        for upstream in self.upstreams:
            for rule in upstream.rules:
                if not rule.decided:
                    found.append(
                        Uncovered(
                            rule.path,
                            rule.name,
                            "(dry run) never recorded a would-be decision"
                            if rule.dry_run
                            else "never decided a case",
                        )
                    )
                missing = rule.condition.missing if rule.condition is not None else None
                if missing is not None:
                    found.append(Uncovered(f"{rule.path}.when", rule.name, missing))
        found.extend(
            Uncovered(limit.path, limit.name, "never matched a case's call")
            for limit in self.limits
            if not limit.matched
        )
        return found


def coverage_of(bundle: CompiledBundle, traces: Iterable[CaseTrace]) -> Coverage:
    decided: Counter[RuleAt] = Counter()
    applied: Counter[RuleAt] = Counter()
    passed: Counter[RuleAt] = Counter()
    failed: Counter[RuleAt] = Counter()
    matched: Counter[str] = Counter()
    exceeded: Counter[str] = Counter()
    for trace in traces:
        decided.update(trace.decided)
        # Per case, not per call: a batch or a repeat is one case.
        applied.update({seen.rule for seen in trace.conditions if seen.applied})
        passed.update({seen.rule for seen in trace.conditions if not seen.applied})
        failed.update({seen.rule for seen in trace.conditions if seen.failed})
        matched.update(trace.limits.keys())  # a Counter adds a mapping's values, not keys
        exceeded.update(name for name, short in trace.limits.items() if short)
    upstreams = tuple(
        UpstreamCoverage(
            upstream.name,
            f"upstreams[{u}]",
            tuple(
                RuleCoverage(
                    f"upstreams[{u}].rules[{r}]",
                    rule.name,
                    rule.effect,
                    rule.dry_run,
                    decided[u, r],
                    None
                    if rule.condition is None
                    else ConditionCoverage(applied[u, r], passed[u, r], failed[u, r]),
                )
                for r, rule in enumerate(upstream.rules)
            ),
        )
        for u, upstream in enumerate(bundle.upstreams)
    )
    limits = tuple(
        LimitCoverage(
            f"limits[{i}]", limit.name, limit.shadow, matched[limit.name], exceeded[limit.name]
        )
        for i, limit in enumerate(bundle.limits)
    )
    return Coverage(upstreams, limits)


def render_coverage(coverage: Coverage) -> str:
    """The summary line, a line per upstream when there are several, then what is uncovered."""
    lines = [f"coverage: {_counts(coverage)}"]
    if len(coverage.upstreams) > 1:
        for upstream in coverage.upstreams:
            conditions = upstream.conditions
            covered = sum(1 for condition in conditions if condition.covered)
            lines.append(
                f"  {upstream.name}: rules {upstream.rules_covered}/{len(upstream.rules)}, "
                f"conditions {covered}/{len(conditions)}"
            )
    lines.extend(f"uncovered: {item}" for item in coverage.uncovered())
    return "\n".join(lines)


def _counts(coverage: Coverage) -> str:
    rules, all_rules = coverage.rules
    conditions, all_conditions = coverage.conditions
    matched = sum(1 for limit in coverage.limits if limit.matched)
    exceeded = sum(1 for limit in coverage.limits if limit.exceeded)
    return (
        f"rules {rules}/{all_rules}, conditions {conditions}/{all_conditions} (both outcomes), "
        f"limits {matched}/{len(coverage.limits)} ({exceeded} exceeded)"
    )


def coverage_json(coverage: Coverage) -> dict[str, Any]:
    """The ``coverage`` object of ``test --format json`` (its shape is in the README)."""
    rules, all_rules = coverage.rules
    conditions, all_conditions = coverage.conditions
    return {
        "rules": {"covered": rules, "total": all_rules, "percent": coverage.rules_percent},
        "conditions": {"covered": conditions, "total": all_conditions},
        "limits": {
            "matched": sum(1 for limit in coverage.limits if limit.matched),
            "exceeded": sum(1 for limit in coverage.limits if limit.exceeded),
            "total": len(coverage.limits),
        },
        "uncovered": [
            {"path": item.path, "name": item.name, "message": item.message}
            for item in coverage.uncovered()
        ],
        "upstreams": [
            {
                "name": upstream.name,
                "path": upstream.path,
                "rules": [_rule_json(rule) for rule in upstream.rules],
            }
            for upstream in coverage.upstreams
        ],
        "limit_details": [
            {
                "path": limit.path,
                "name": limit.name,
                "shadow": limit.shadow,
                "matched": limit.matched,
                "exceeded": limit.exceeded,
            }
            for limit in coverage.limits
        ],
    }


def _rule_json(rule: RuleCoverage) -> dict[str, Any]:
    condition = rule.condition
    return {
        "path": rule.path,
        "name": rule.name,
        "effect": str(rule.effect),
        "dry_run": rule.dry_run,
        "decided": rule.decided,
        "when": None
        if condition is None
        else {
            "applied": condition.applied,
            "passed": condition.passed,
            "failed": condition.failed,
            "covered": condition.covered,
        },
    }
