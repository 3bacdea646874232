"""``test`` and ``lint`` reports for CI: the JSON shapes the README documents, and JUnit XML
that parses, counts right and escapes what case names and messages hold."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from policy_service.authoring.cases import parse_cases
from policy_service.authoring.coverage import coverage_of
from policy_service.authoring.findings import Finding
from policy_service.authoring.reports import (
    CaseFileRun,
    LintResult,
    cases_json,
    cases_junit,
    lint_json,
    lint_junit,
)
from policy_service.authoring.runner import CaseResult, run_cases
from policy_service.bundles.loader import load_bundle
from policy_service.errors import BundleProblem

ROOT = Path(__file__).resolve().parents[3]
FINANCE = ROOT / "examples" / "finance" / "bundle.yaml"
READ = {"upstream": "fininfo", "tool": "get_quote", "arguments": {"symbol": "ACME"}}
ALICE = {"subject": "alice", "client_id": "research-app", "scopes": ["fininfo:read"]}


async def finance_runs() -> list[CaseFileRun]:
    """Two case files: one passing case, then a passing and a failing one whose name needs
    escaping in XML."""
    bundle = load_bundle(FINANCE)

    async def decided(cases: list[dict[str, object]]) -> list[CaseResult]:
        return await run_cases(bundle, parse_cases({"cases": cases}, "inline", {}))

    first = await decided(
        [{"name": "reads", "caller": ALICE, "call": READ, "expect": {"decision": "allow"}}]
    )
    second = await decided(
        [
            {"name": "reads again", "caller": ALICE, "call": READ, "expect": {"decision": "allow"}},
            {
                "name": 'a <wrong> & "quoted" one',
                "caller": ALICE,
                "call": READ,
                "expect": {"decision": "deny", "rule": "session"},
            },
        ]
    )
    return [CaseFileRun(Path("a.cases.yaml"), first), CaseFileRun(Path("b.cases.yaml"), second)]


async def test_the_test_json_shape() -> None:
    runs = await finance_runs()
    coverage = coverage_of(load_bundle(FINANCE), [r.trace for run in runs for r in run.results])
    document = json.loads(cases_json("finance/bundle.yaml", "rev-1", runs, coverage))
    assert set(document) == {"bundle", "revision", "cases", "passed", "failed", "coverage"}
    assert (document["bundle"], document["revision"]) == ("finance/bundle.yaml", "rev-1")
    assert (document["passed"], document["failed"]) == (2, 1)
    assert [case["file"] for case in document["cases"]] == [
        "a.cases.yaml",
        "b.cases.yaml",
        "b.cases.yaml",
    ]
    assert document["cases"][2] == {
        "name": 'a <wrong> & "quoted" one',
        "file": "b.cases.yaml",
        "passed": False,
        "decision": "allow",
        "reason": "allowed",
        "rules": ["read"],
        "status": None,
        "mismatches": ["decision: expected deny, got allow", "rule: expected session, got read"],
    }
    covered = document["coverage"]
    assert covered["rules"] == {"covered": 1, "total": 6, "percent": 16.7}
    assert covered["conditions"] == {"covered": 0, "total": 2}
    assert covered["limits"] == {"matched": 1, "exceeded": 0, "total": 2}
    assert covered["uncovered"][0] == {
        "path": "upstreams[0].rules[0]",
        "name": "session",
        "message": "never decided a case",
    }
    rules = covered["upstreams"][0]["rules"]
    assert covered["upstreams"][0]["name"] == "fininfo"
    assert rules[1] == {
        "path": "upstreams[0].rules[1]",
        "name": "read",
        "effect": "allow",
        "dry_run": False,
        "decided": 3,
        "when": None,
    }
    assert rules[3]["when"] == {"applied": 0, "passed": 0, "failed": 0, "covered": False}
    assert covered["limit_details"][1] == {
        "path": "limits[1]",
        "name": "per-client",
        "shadow": False,
        "matched": 3,
        "exceeded": 0,
    }


async def test_the_test_junit_counts_and_escapes() -> None:
    runs = await finance_runs()
    coverage = coverage_of(load_bundle(FINANCE), [r.trace for run in runs for r in run.results])
    root = ET.fromstring(cases_junit(runs, coverage))
    assert (root.get("tests"), root.get("failures")) == ("3", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["a.cases.yaml", "b.cases.yaml", "coverage"]
    assert [(s.get("tests"), s.get("failures")) for s in suites] == [
        ("1", "0"),
        ("2", "1"),
        ("0", "0"),  # without --min-coverage the coverage suite only reports
    ]
    failing = suites[1].findall("testcase")[1]
    assert failing.get("name") == 'a <wrong> & "quoted" one'
    failure = failing.find("failure")
    assert failure is not None
    assert failure.get("message") == "decision: expected deny, got allow"
    assert failure.text is not None
    assert "decided: allow (allowed) by rule read" in failure.text
    out = suites[2].find("system-out")
    assert out is not None
    assert out.text is not None
    assert out.text.startswith("coverage: rules 1/6,")
    properties = {p.get("name"): p.get("value") for p in suites[2].iter("property")}
    assert properties["rules.covered"] == "1"
    assert properties["limits.total"] == "2"


async def test_min_coverage_is_a_junit_testcase() -> None:
    runs = await finance_runs()
    coverage = coverage_of(load_bundle(FINANCE), [r.trace for run in runs for r in run.results])
    below = ET.fromstring(cases_junit(runs, coverage, 50))
    assert (below.get("tests"), below.get("failures")) == ("4", "2")
    gate = below.findall("testsuite")[-1].find("testcase")
    assert gate is not None
    assert gate.get("name") == "rules covered >= 50%"
    failure = gate.find("failure")
    assert failure is not None
    assert failure.get("message") == "rules covered 16.7%, below 50%"
    met = ET.fromstring(cases_junit(runs, coverage, 10))
    assert (met.get("tests"), met.get("failures")) == ("4", "1")


def lint_results() -> list[LintResult]:
    return [
        LintResult("good.yaml", "rev-1"),
        LintResult(
            "broken.yaml",
            problems=(
                BundleProblem("broken.yaml", "upstreams[0].name", "is required"),
                BundleProblem("keys.json", "", "cannot be read: <bad> & \x01"),
            ),
        ),
        LintResult("shadowed.yaml", "rev-2", findings=(Finding("upstreams[0].rules[1]", "x"),)),
    ]


def test_the_lint_json_shape() -> None:
    document = json.loads(lint_json(lint_results()))
    assert document["ok"] is False
    assert document["bundles"] == [
        {"path": "good.yaml", "ok": True, "revision": "rev-1", "problems": [], "findings": []},
        {
            "path": "broken.yaml",
            "ok": False,
            "revision": None,
            "problems": [
                {"file": "broken.yaml", "path": "upstreams[0].name", "message": "is required"},
                {"file": "keys.json", "path": "", "message": "cannot be read: <bad> & \x01"},
            ],
            "findings": [],
        },
        {
            "path": "shadowed.yaml",
            "ok": False,
            "revision": "rev-2",
            "problems": [],
            "findings": [{"path": "upstreams[0].rules[1]", "message": "x"}],
        },
    ]
    assert json.loads(lint_json(lint_results()[:1]))["ok"] is True


def test_the_lint_junit_has_a_failure_per_problem_and_finding() -> None:
    root = ET.fromstring(lint_junit(lint_results()))
    assert (root.get("tests"), root.get("failures")) == ("4", "3")
    suites = root.findall("testsuite")
    assert [(s.get("name"), s.get("tests"), s.get("failures")) for s in suites] == [
        ("good.yaml", "1", "0"),
        ("broken.yaml", "2", "2"),
        ("shadowed.yaml", "1", "1"),
    ]
    names = [case.get("name") for case in suites[1].iter("testcase")]
    assert names == ["broken.yaml: upstreams[0].name", "keys.json"]
    failure = suites[1].findall("testcase")[1].find("failure")
    assert failure is not None
    # Escaped where XML can escape; a control character XML cannot hold at all is replaced.
    assert failure.get("message") == "cannot be read: <bad> & \ufffd"
    assert failure.get("type") == "problem"
