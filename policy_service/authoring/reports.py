"""What ``test`` and ``lint`` write for CI (``--format json`` or ``junit``).

The JSON shapes are documented in the README and only ever grow: a CI script may read any
key listed there. JUnit XML is built with ``xml.etree``, so names and messages that hold
quotes, ``<`` or ``&`` are escaped; characters XML 1.0 cannot carry at all (control
characters a YAML string may hold) are replaced, since no escape makes them legal.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from policy_service.authoring.coverage import Coverage, coverage_json, render_coverage
from policy_service.authoring.findings import Finding
from policy_service.authoring.runner import CaseResult
from policy_service.errors import BundleProblem

FORMATS = ("text", "json", "junit")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class CaseFileRun:
    """One case file's cases, as decided."""

    path: Path
    results: Sequence[CaseResult]


@dataclass(frozen=True, slots=True)
class LintResult:
    """One bundle as ``lint`` found it: problems (it does not load) or findings (it does)."""

    path: str
    revision: str | None = None  # None: it did not load
    problems: tuple[BundleProblem, ...] = ()
    findings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        return self.revision is not None and not self.findings


# --- test ---------------------------------------------------------------------------------


def cases_json(bundle: str, revision: str, runs: Sequence[CaseFileRun], coverage: Coverage) -> str:
    cases = [
        {
            "name": result.case.name,
            "file": str(run.path),
            "passed": result.passed,
            "decision": result.outcome.decision,
            "reason": result.outcome.reason,
            "rules": list(result.outcome.rules),
            "status": result.outcome.status,
            "mismatches": list(result.mismatches),
        }
        for run in runs
        for result in run.results
    ]
    failed = sum(1 for case in cases if not case["passed"])
    document = {
        "bundle": bundle,
        "revision": revision,
        "cases": cases,
        "passed": len(cases) - failed,
        "failed": failed,
        "coverage": coverage_json(coverage),
    }
    return json.dumps(document, indent=2) + "\n"


def cases_junit(
    runs: Sequence[CaseFileRun], coverage: Coverage, min_coverage: float | None = None
) -> str:
    """A testsuite per case file, a testcase per case; then a ``coverage`` suite that holds
    the summary, with one testcase (failing below it) when ``--min-coverage`` was given."""
    root = ET.Element("testsuites", name="policy-service test")
    for run in runs:
        suite = _suite(root, str(run.path))
        for result in run.results:
            failure = None
            if not result.passed:
                details = [*result.mismatches, f"decided: {result.outcome.describe()}"]
                failure = (result.mismatches[0], "\n".join(details))
            _testcase(suite, run.path.name, result.case.name, failure, "mismatch")
    suite = _suite(root, "coverage")
    properties = ET.SubElement(suite, "properties")
    summary = coverage_json(coverage)
    for measure in ("rules", "conditions", "limits"):
        for key, value in summary[measure].items():
            ET.SubElement(properties, "property", name=f"{measure}.{key}", value=str(value))
    if min_coverage is not None:
        failure = None
        if coverage.below(min_coverage):
            message = f"rules covered {coverage.rules_percent}%, below {min_coverage:g}%"
            failure = (message, render_coverage(coverage))
        _testcase(suite, "coverage", f"rules covered >= {min_coverage:g}%", failure, "coverage")
    ET.SubElement(suite, "system-out").text = _xml_text(render_coverage(coverage))
    _count(root)
    return _xml(root)


# --- lint ---------------------------------------------------------------------------------


def lint_json(results: Sequence[LintResult]) -> str:
    document = {
        "ok": all(result.ok for result in results),
        "bundles": [
            {
                "path": result.path,
                "ok": result.ok,
                "revision": result.revision,
                "problems": [
                    {"file": problem.file, "path": problem.path, "message": problem.message}
                    for problem in result.problems
                ],
                "findings": [
                    {"path": finding.path, "message": finding.message}
                    for finding in result.findings
                ],
            }
            for result in results
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def lint_junit(results: Sequence[LintResult]) -> str:
    """A testsuite per bundle, a failing testcase per problem or finding (so a dashboard
    lists each one where it is); a bundle with none has one passing testcase."""
    root = ET.Element("testsuites", name="policy-service lint")
    for result in results:
        suite = _suite(root, result.path)
        for problem in result.problems:
            where = f"{problem.file}: {problem.path}" if problem.path else problem.file
            _testcase(suite, result.path, where, (problem.message, str(problem)), "problem")
        for finding in result.findings:
            _testcase(suite, result.path, finding.path, (finding.message, str(finding)), "finding")
        if result.ok:
            _testcase(suite, result.path, "lint", None, "")
    _count(root)
    return _xml(root)


# --- XML ----------------------------------------------------------------------------------


def _suite(root: ET.Element, name: str) -> ET.Element:
    return ET.SubElement(root, "testsuite", name=_xml_text(name))


def _testcase(
    suite: ET.Element, classname: str, name: str, failure: tuple[str, str] | None, kind: str
) -> None:
    case = ET.SubElement(suite, "testcase", classname=_xml_text(classname), name=_xml_text(name))
    if failure is not None:
        message, details = failure
        element = ET.SubElement(case, "failure", message=_xml_text(message), type=kind)
        element.text = _xml_text(details)


def _count(root: ET.Element) -> None:
    """The ``tests`` and ``failures`` counts every JUnit reader expects, per suite and in all."""
    total = failed = 0
    for suite in root:
        cases = suite.findall("testcase")
        failures = sum(1 for case in cases if case.find("failure") is not None)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        total, failed = total + len(cases), failed + failures
    root.set("tests", str(total))
    root.set("failures", str(failed))
    root.set("errors", "0")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _xml(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
