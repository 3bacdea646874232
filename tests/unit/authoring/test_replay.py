"""Replay: recorded checks decided again, and a deliberate rule change found exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policy_service.authoring.replay import RecordingError, parse_recording, replay
from policy_service.bundles.loader import load_bundle
from policy_service.state import BundleState
from policy_service.testing import tool_call_body
from tests.support.bundles import TestBundle, write_test_bundle
from tests.unit.telemetry.test_recording import Recording, tool_headers

LIMITS = """\
  - name: one-quote
    rate: 1/min
    key: [client]
    match: {upstreams: [fininfo], tools: ["get_*"]}
"""


async def record_traffic(bundle: TestBundle) -> list[str]:
    """A small day of traffic: two readers, a trader without the scope, an anonymous caller,
    a session call, and a second quote that the per-client limit refuses."""
    recording = Recording(bundle)
    alice = {"authorization": f"Bearer {bundle.token('fininfo:read')}"}
    bob = {"authorization": f"Bearer {bundle.token('fininfo:read', subject='bob', client_id='b')}"}
    calls = [
        (alice, "get_quote", 1),
        (alice, "list_symbols", 2),
        (alice, "place_trade", 3),
        ({}, "get_quote", 4),
        (bob, "get_quote", 5),
        (bob, "get_quote", 6),  # the limit's second take in a minute: rate_limited
    ]
    for credential, tool, request_id in calls:
        await recording.check(
            headers=tool_headers(credential, tool), body=tool_call_body(tool, request_id)
        )
    return [line.decode() for line in recording.sink.lines]


def changed_bundle(bundle: TestBundle) -> Path:
    """The deliberate change: the read rule no longer names get_quote."""
    text = bundle.path.read_text()
    changed = text.replace("tools: [get_quote, list_symbols]", "tools: [list_symbols]")
    assert changed != text
    path = bundle.path.with_name("candidate.yaml")
    path.write_text(changed.replace("revision: test-1", "revision: test-2"))
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> TestBundle:
    return write_test_bundle(tmp_path, limits=LIMITS)


async def test_a_rule_change_flips_exactly_the_calls_it_names(bundle: TestBundle) -> None:
    lines = await record_traffic(bundle)
    checks = list(parse_recording(lines))
    assert [check.recorded.reason for check in checks] == [
        "allowed",
        "allowed",
        "insufficient_scope",
        "missing_credential",
        "allowed",
        "rate_limited",
    ]
    baseline = BundleState.from_bundle(bundle.bundle)
    candidate = BundleState.from_bundle(load_bundle(changed_bundle(bundle)))

    diff = await replay(checks, candidate, baseline)

    # Bob's second quote changes too: replay spends no limit, so both bundles decide it
    # on the policy alone, where the recorded decision was the limit's.
    assert [(change.check.decision_id, change.kind) for change in diff.changes] == [
        (checks[0].decision_id, "allow->deny"),
        (checks[4].decision_id, "allow->deny"),
        (checks[5].decision_id, "allow->deny"),
    ]
    first = diff.changes[0]
    assert first.before.describe() == "allow (allowed, rule read)"
    assert first.after.describe() == "deny (no_matching_rule)"
    assert first.check.caller == "alice/test-client"
    assert first.check.call == "tools/call get_quote"
    assert diff.summary() == ("6 checks replayed (test-1 -> test-2), 3 changed: allow->deny 3")
    report = json.loads(json.dumps(diff.as_json()))
    assert report["changed"] == 3
    assert report["changes"][0]["upstream"] == "fininfo"


async def test_against_the_recorded_decisions_history_is_not_compared(
    bundle: TestBundle,
) -> None:
    checks = list(parse_recording(await record_traffic(bundle)))
    same = await replay(checks, BundleState.from_bundle(bundle.bundle))
    assert same.changes == []
    assert same.not_compared == 1  # the rate-limited quote
    assert same.baseline == "recorded"

    candidate = BundleState.from_bundle(load_bundle(changed_bundle(bundle)))
    diff = await replay(checks, candidate)
    assert [change.check.line for change in diff.changes] == [1, 5]
    assert all(change.before.reason == "allowed" for change in diff.changes)


async def test_a_reason_change_without_a_decision_change_is_reported(
    bundle: TestBundle,
) -> None:
    checks = list(parse_recording(await record_traffic(bundle)))
    text = bundle.path.read_text()
    # place_trade is now refused by a deny rule instead of for a missing scope.
    path = bundle.path.with_name("deny-trades.yaml")
    path.write_text(text.replace("tools: [halt_*]", "tools: [halt_*, place_trade]"))
    diff = await replay(checks, BundleState.from_bundle(load_bundle(path)))
    (change,) = diff.changes
    assert change.kind == "reason_changed"
    assert change.before.reason == "insufficient_scope"
    assert change.after.describe() == "deny (denied_by_rule, rule trading-off-hours)"


def test_lines_that_are_not_a_recording_are_refused_by_number() -> None:
    with pytest.raises(RecordingError, match=r"^recording line 2: not a JSON object$"):
        list(parse_recording(["", "{oops"]))
    with pytest.raises(RecordingError, match=r"line 1: not a policy_service\.recording\.v1 line"):
        list(parse_recording(['{"schema": "policy_service.audit.v1"}']))
    with pytest.raises(RecordingError, match="line 1: a field is missing or mistyped"):
        list(parse_recording(['{"schema": "policy_service.recording.v1"}']))
