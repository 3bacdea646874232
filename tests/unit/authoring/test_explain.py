"""``policy-service explain``: the rule walk agrees with the decision, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_service.authoring.cases import load_cases
from policy_service.authoring.explain import explain, render
from policy_service.authoring.runner import run_cases
from policy_service.bundles.loader import load_bundle
from policy_service.ratelimits.limiter import RateLimiter
from policy_service.ratelimits.store import InProcessStore

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*/bundle.yaml"))
FINANCE = ROOT / "examples" / "finance" / "bundle.yaml"


@pytest.mark.parametrize("bundle_path", EXAMPLES, ids=lambda path: path.parent.name)
async def test_explain_decides_every_example_case_as_the_test_runner(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    cases = load_cases(bundle_path.with_name("bundle.cases.yaml"))
    results = await run_cases(bundle, [case for case in cases if case.repeat == 1])
    for result in results:
        case = result.case
        explained = await explain(bundle, case.caller, case.call)
        assert explained.outcome.decision == result.outcome.decision, case.name
        assert explained.outcome.reason == result.outcome.reason, case.name
        applying = [step for _, step in explained.steps if step.applies]
        if result.outcome.reason in ("allowed", "denied_by_rule", "insufficient_scope"):
            assert applying, case.name
        if result.outcome.reason == "condition_not_met":
            # The rule named is the first whose condition kept it out.
            held = [step for _, step in explained.steps if step.target_matched]
            assert held[0].rule.name == result.outcome.rules[0], case.name
        elif result.outcome.rules:  # the walk ends at the rule the decision names
            assert applying[-1].rule.name in result.outcome.rules, case.name
        if result.outcome.reason in ("no_matching_rule", "condition_not_met"):
            assert not applying, case.name


async def test_explain_names_rules_conditions_scopes_and_limits() -> None:
    bundle = load_bundle(FINANCE)
    case = next(
        case
        for case in load_cases(FINANCE.with_name("bundle.cases.yaml"))
        if case.name == "an analyst cannot trade"
    )
    text = render(await explain(bundle, case.caller, case.call))
    lines = text.splitlines()
    assert lines[0] == (
        "decision   deny (insufficient_scope) by rule trade, missing fininfo:trade, HTTP 200"
    )
    assert (
        "caller     alice via jwt (issuer corp, client research-app); scopes: fininfo:read" in lines
    )
    assert "call       tool place_trade" in lines
    assert "missing scopes: fininfo:trade" in lines
    assert "  1. session: target does not match" in lines
    assert "  3. large-orders: target matches, when false, -> does not apply" in lines
    assert "  4. trade: target matches, -> applies (allow, needs fininfo:trade MISSING)" in lines
    assert any(
        line.startswith("  trades: 10/3600s, burst 10, cost 1; bucket trades:") for line in lines
    )
    assert lines[-1].endswith(": 60 of 60 left")


async def test_a_failing_condition_is_shown_with_its_reason() -> None:
    bundle = load_bundle(FINANCE)
    case = next(
        case
        for case in load_cases(FINANCE.with_name("bundle.cases.yaml"))
        if case.name.startswith("a quantity that is not a number is refused")
    )
    text = render(await explain(bundle, case.caller, case.call))
    step = next(line for line in text.splitlines() if line.startswith("  3."))
    assert step.startswith("  3. large-orders: target matches, when failed (")
    assert step.endswith("-> applies (deny)")


async def test_live_buckets_are_read_without_spending() -> None:
    bundle = load_bundle(FINANCE)
    case = next(
        case
        for case in load_cases(FINANCE.with_name("bundle.cases.yaml"))
        if case.name == "a trader places a small order"
    )
    live = RateLimiter(InProcessStore())
    # Spend three of the trader's ten trades on the "live" store first.
    from policy_service.authoring.runner import principal_for
    from policy_service.ratelimits.keys import claims_for
    from policy_service.request.model import CallTarget, TargetKind

    assert case.caller is not None
    principal = principal_for(bundle, case.caller)
    assert principal is not None
    target = CallTarget(TargetKind.TOOL, "place_trade", "tools/call", 1)
    for _ in range(3):
        await live.check(claims_for(bundle.limits, "fininfo", principal, [target]))
    for _ in range(2):  # explaining twice shows the same state: nothing was taken
        explained = await explain(bundle, case.caller, case.call, live_limiter=live)
        by_name = {view.state.limit.name: view.state.remaining for view in explained.limits}
        assert by_name == {"trades": 7, "per-client": 57}
    assert "limits (live buckets)" in render(explained)
