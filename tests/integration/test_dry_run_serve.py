"""``policy-service serve --dry-run-bundle``: a candidate bundle decides beside the live one,
on real traffic, and only its would-be decisions are recorded; it reloads like the bundle."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_audit_concurrency import read_events
from tests.integration.test_bundle_reload_load import Kind, Load, good_text, until, write_atomic
from tests.support.bundles import write_test_bundle
from tests.support.envoy import free_port
from tests.support.serve import serve_command, serving


def _dry_runs_of(audit_log: Path, kind_ids: set[str]) -> list[object]:
    return [
        event.get("dry_run") for event in read_events(audit_log) if event["decision_id"] in kind_ids
    ]


async def test_a_dry_run_bundle_is_recorded_never_enforced_and_reloads(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    template = bundle.path.read_text()
    live = bundle.path
    live.write_text(good_text(template, "A-1"))  # get_quote allowed
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(good_text(template, "B-1"))  # get_quote refused
    port = free_port()
    audit_log = tmp_path / "audit.jsonl"
    command = serve_command(
        live,
        port,
        "--dry-run-bundle",
        str(candidate),
        "--poll-interval",
        "0.1",
        "--audit-log",
        str(audit_log),
    )
    with serving([(port, command)], tmp_path):
        load = Load(port, bundle)
        load.start()
        try:
            await load.more_answers(30)
            first = list(load.answers)
            write_atomic(candidate, good_text(template, "A-2").encode())

            def candidate_reloaded() -> bool:
                events = read_events(audit_log)
                return any(
                    entry["name"] == "A-2" for event in events for entry in event.get("dry_run", [])
                )

            await until(candidate_reloaded, "the dry-run bundle's new revision")
            await load.more_answers(30)
        finally:
            await load.stop()
    assert not load.errors
    events = {event["decision_id"]: event for event in read_events(audit_log)}
    quotes = [answer for answer in first if answer.kind is Kind.GET_QUOTE]
    assert quotes
    for answer in quotes:
        event = events[answer.decision_id]
        # Enforced: the live bundle allows; recorded: the candidate would have refused.
        assert answer.allowed
        assert event["bundle_revision"] == "A-1"
        assert event["dry_run"] == [
            {
                "source": "bundle",
                "name": "B-1",
                "decision": "deny",
                "reason": "no_matching_rule",
                "agrees": False,
            }
        ]
    later = [events[answer.decision_id] for answer in load.answers[len(first) :]]
    last = later[-1]["dry_run"]
    assert isinstance(last, list)
    assert last[0]["name"] == "A-2"
    assert last[0]["agrees"] is True
