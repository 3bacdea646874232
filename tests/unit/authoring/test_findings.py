"""Every lint finding has a fixture with its exact message pinned, and the examples have
none (a finding in a shipped example would be a false positive or a real bug).

Each file in tests/fixtures/bundles/findings/ loads (it is a valid bundle) and starts with
one ``# finding: <path>: <message>`` line per finding lint must report, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_service.authoring.findings import lint_findings
from policy_service.bundles.loader import load_bundle

ROOT = Path(__file__).parents[3]
FINDINGS = ROOT / "tests" / "fixtures" / "bundles" / "findings"
FIXTURES = sorted(FINDINGS.glob("*.yaml"))


def expected(path: Path) -> list[str]:
    prefix = "# finding: "
    return [
        line[len(prefix) :] for line in path.read_text().splitlines() if line.startswith(prefix)
    ]


def test_there_is_a_fixture_per_kind_of_finding() -> None:
    assert len(FIXTURES) >= 4


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda path: path.stem)
def test_lint_reports_exact_findings(fixture: Path) -> None:
    want = expected(fixture)
    assert want, f"{fixture.name} has no '# finding:' lines"
    bundle = load_bundle(fixture, environ={})
    assert [str(finding) for finding in lint_findings(bundle)] == want


@pytest.mark.parametrize(
    "example", sorted((ROOT / "examples").glob("*/bundle.yaml")), ids=lambda p: p.parent.name
)
def test_the_examples_have_no_findings(example: Path) -> None:
    assert lint_findings(load_bundle(example, environ={"CI_HMAC": "x" * 32})) == []
