"""Dry run: a rule, or a whole bundle, is evaluated and recorded but never enforced."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format

from policy_service.authoring.cases import Call, Caller
from policy_service.authoring.runner import http_request_for, principal_for
from policy_service.bundles.loader import load_bundle
from policy_service.decisions.model import Allow, Deny
from policy_service.gen.policy_service.audit.v1 import audit_pb2
from policy_service.pipeline import CheckPipeline, GivenPrincipal
from policy_service.policy.model import CompiledBundle
from policy_service.ratelimits.limiter import RateLimiter
from policy_service.ratelimits.store import InProcessStore
from policy_service.state import BundleState
from policy_service.telemetry.audit import audit_event
from policy_service.telemetry.facts import facts_of
from policy_service.telemetry.metrics import CheckMetrics
from policy_service.telemetry.record import CheckRecord, DryRunRecord
from policy_service.testing import capture_spans

ROOT = Path(__file__).resolve().parents[2]
FINANCE = ROOT / "examples" / "finance" / "bundle.yaml"
TRADER = Caller(subject="bob", client_id="desk", scopes=("fininfo:read", "fininfo:trade"))
ANALYST = Caller(subject="alice", client_id="research", scopes=("fininfo:read",))


def _trade(quantity: int = 5) -> Call:
    arguments = {"symbol": "ACME", "side": "buy", "quantity": quantity}
    return Call("fininfo", "tool", "place_trade", arguments)


async def _check(
    gateway: CheckPipeline, bundle: CompiledBundle, caller: Caller, call: Call
) -> tuple[Allow | Deny, CheckRecord]:
    record = CheckRecord.new()
    request = http_request_for(bundle.by_name[call.upstream], call, caller)
    # The same bundles (and dry-run bundle), with the case's caller standing in for a token.
    as_caller = CheckPipeline(
        gateway.bundles, identity=GivenPrincipal(principal_for(bundle, caller))
    )
    decision = await as_caller.check(request, record)
    assert isinstance(decision, Allow | Deny)
    return decision, record


def _night(caller: Caller) -> Caller:
    return Caller(caller.subject, caller.client_id, None, caller.scopes, {"market_hour": 23})


async def test_a_dry_run_rule_records_what_it_would_do_and_changes_nothing() -> None:
    bundle = load_bundle(FINANCE)
    gateway = CheckPipeline(BundleState.from_bundle(bundle))
    decision, record = await _check(gateway, bundle, _night(TRADER), _trade())
    assert isinstance(decision, Allow)
    assert decision.rules == ("trade",)
    assert record.dry_runs == (
        DryRunRecord("rule", "trade-market-hours", "deny", "denied_by_rule", agrees=False),
    )
    # In market hours the dry-run rule's condition is false: it takes no part, no record.
    day = Caller("bob", "desk", None, TRADER.scopes, {"market_hour": 11})
    decision, record = await _check(gateway, bundle, day, _trade())
    assert isinstance(decision, Allow)
    assert record.dry_runs == ()


async def test_a_dry_run_record_says_when_it_agrees() -> None:
    bundle = load_bundle(FINANCE)
    gateway = CheckPipeline(BundleState.from_bundle(bundle))
    # The analyst is refused anyway (no trade scope); the dry-run rule would deny too, but
    # for its own reason, so the record says they differ in reason.
    decision, record = await _check(gateway, bundle, _night(ANALYST), _trade())
    assert isinstance(decision, Deny)
    assert decision.reason == "insufficient_scope"
    assert record.dry_runs == (
        DryRunRecord("rule", "trade-market-hours", "deny", "denied_by_rule", agrees=False),
    )


async def test_a_dry_run_bundle_is_decided_beside_the_enforced_one(tmp_path: Path) -> None:
    live = load_bundle(FINANCE)
    # The candidate takes trading away from everyone: its would-be decisions show who
    # it would refuse, while the live bundle keeps deciding.
    candidate_path = tmp_path / "candidate.yaml"
    candidate_path.write_text(
        FINANCE.read_text()
        .replace("revision: finance-2026-11-21", "revision: candidate-2")
        .replace("scopes: [fininfo:trade]", "scopes: [fininfo:trade-v2]")
    )
    candidate = load_bundle(candidate_path)
    store = InProcessStore()
    provider, exporter = capture_spans()
    gateway = CheckPipeline(
        BundleState.from_bundle(live), RateLimiter(store), provider.get_tracer("test")
    )
    gateway.bundles.swap_dry_run(BundleState.from_bundle(candidate))

    decision, record = await _check(gateway, live, TRADER, _trade())
    assert isinstance(decision, Allow)
    assert record.bundle is live
    assert record.dry_runs == (
        DryRunRecord(
            "bundle",
            "candidate-2",
            "deny",
            "insufficient_scope",
            agrees=False,
            missing_scopes=("fininfo:trade-v2",),
        ),
    )
    # Only the enforced check took from the buckets and made spans.
    buckets_after_one = len(store)
    spans_after_one = len(exporter.get_finished_spans())
    decision, record = await _check(gateway, live, TRADER, Call("fininfo", "tool", "get_quote"))
    assert isinstance(decision, Allow)
    assert record.dry_runs == (
        DryRunRecord("bundle", "candidate-2", "allow", "allowed", agrees=True),
    )
    assert len(store) == buckets_after_one  # per-client bucket already exists; no new ones
    assert len(exporter.get_finished_spans()) == 2 * spans_after_one

    gateway.bundles.swap_dry_run(None)
    _, record = await _check(gateway, live, TRADER, _trade())
    assert record.dry_runs == ()


async def test_dry_runs_reach_the_audit_event_and_the_metrics() -> None:
    bundle = load_bundle(FINANCE)
    gateway = CheckPipeline(
        BundleState.from_bundle(bundle),
        identity=GivenPrincipal(principal_for(bundle, _night(TRADER))),
    )
    call = _trade()
    request = http_request_for(bundle.by_name["fininfo"], call, _night(TRADER))
    record = CheckRecord.new()
    decision = await gateway.check(request, record)
    facts = facts_of(record)
    event = audit_event(
        request, decision, record, facts, latency_seconds=0.001, trace_id="", span_id=""
    )
    assert event["dry_run"] == [
        {
            "source": "rule",
            "name": "trade-market-hours",
            "decision": "deny",
            "reason": "denied_by_rule",
            "agrees": False,
        }
    ]
    parsed = json_format.ParseDict(event, audit_pb2.AuditEvent())
    assert parsed.dry_run[0].name == "trade-market-hours"

    metrics = CheckMetrics()
    metrics.observe(decision, record, facts, 0.001)
    labels = {
        "source": "rule",
        "rule": "trade-market-hours",
        "decision": "deny",
        "reason": "denied_by_rule",
        "agrees": "false",
    }
    assert metrics.registry.get_sample_value("policy_service_dry_run_decisions_total", labels) == 1
