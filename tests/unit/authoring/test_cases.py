"""``policy-service test``: case files, how they run, and what the report says.

Every case-file error has a fixture in tests/fixtures/cases/invalid/ with its exact message
pinned, as bundle errors do; tests/fixtures/cases/valid/ holds files that use every field.
The example bundles' own tests run here too: an example that stops deciding as its tests
say fails the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_service.authoring.cases import check_case_targets, load_cases, parse_cases
from policy_service.authoring.runner import report, run_cases
from policy_service.bundles.loader import load_bundle
from policy_service.errors import CaseFileError
from tests.support.bundles import write_test_bundle

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "cases"
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))
VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*/bundle.yaml"))


def expected_problems(path: Path) -> list[str]:
    prefix = "# expect: "
    return [
        line[len(prefix) :] for line in path.read_text().splitlines() if line.startswith(prefix)
    ]


def test_there_is_a_fixture_per_case_file_error() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize("fixture", INVALID, ids=lambda path: path.stem)
def test_invalid_case_file_reports_exact_messages(
    fixture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POLICY_TEST_TOKEN_NOT_SET", raising=False)
    expected = expected_problems(fixture)
    assert expected, f"{fixture.name} has no '# expect:' lines"
    bundle = load_bundle(FIXTURES / "bundle.yaml")
    with pytest.raises(CaseFileError) as caught:
        check_case_targets(bundle, load_cases(fixture), str(fixture))
    assert all(problem.file == str(fixture) for problem in caught.value.problems)
    reported = [f"{p.path}: {p.message}" if p.path else p.message for p in caught.value.problems]
    assert reported == expected
    assert str(caught.value).startswith("case file is invalid")


@pytest.mark.parametrize("fixture", VALID, ids=lambda path: path.stem)
def test_valid_case_file_loads_and_names_what_the_bundle_has(fixture: Path) -> None:
    bundle = load_bundle(FIXTURES / "bundle.yaml")
    cases = load_cases(fixture, {"POLICY_TEST_TOKEN": "x.y.z"})
    check_case_targets(bundle, cases, str(fixture))
    assert len(cases) >= 2


async def test_the_valid_fixture_with_every_field_passes() -> None:
    bundle = load_bundle(FIXTURES / "bundle.yaml")
    cases = load_cases(FIXTURES / "valid" / "every_field.yaml")
    results = await run_cases(bundle, cases)
    assert all(result.passed for result in results), report(results)
    first = cases[0]
    assert first.call.headers == {"x-request-id": "abc-123"}  # names are not case-sensitive
    assert first.call.protocol_version == "2025-06-18"
    assert first.caller is not None
    assert first.caller.claims["profile"] == {"team": "data"}
    assert cases[1].caller is not None
    assert cases[1].caller.subject == "bob"


def test_examples_cover_the_common_setups() -> None:
    names = {path.parent.name for path in EXAMPLES}
    assert {"finance", "per-team", "ci-bots", "a2a-agents"} <= names


@pytest.mark.parametrize("bundle_path", EXAMPLES, ids=lambda path: path.parent.name)
async def test_example_bundles_pass_their_own_tests(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    cases_path = bundle_path.with_name("bundle.cases.yaml")
    cases = load_cases(cases_path)
    check_case_targets(bundle, cases, str(cases_path))
    assert len(cases) >= 5
    results = await run_cases(bundle, cases)
    failures = [result for result in results if not result.passed]
    assert not failures, report(results)
    # Both answers appear: tests that only ever expect "allow" would prove little.
    assert {result.outcome.decision for result in results} == {"allow", "deny"}


FINANCE = ROOT / "examples" / "finance" / "bundle.yaml"


async def test_a_wrong_expectation_fails_and_says_what_differs() -> None:
    bundle = load_bundle(FINANCE)
    cases = parse_cases(
        {
            "cases": [
                {
                    "name": "analysts may trade (wrong)",
                    "caller": {"subject": "alice", "scopes": ["fininfo:read"]},
                    "call": {
                        "upstream": "fininfo",
                        "tool": "place_trade",
                        "arguments": {"symbol": "ACME", "side": "buy", "quantity": 1},
                    },
                    "expect": {"decision": "allow", "rule": "read", "status": 403},
                },
                {
                    "name": "quotes are readable",
                    "caller": {"subject": "alice", "scopes": ["fininfo:read"]},
                    "call": {"upstream": "fininfo", "tool": "get_quote"},
                    "expect": {"decision": "allow"},
                },
            ]
        },
        "inline",
        {},
    )
    results = await run_cases(bundle, cases)
    assert [result.passed for result in results] == [False, True]
    assert results[0].mismatches == (
        "decision: expected allow, got deny",
        "rule: expected read, got trade",
        "status: expected 403, got 200",
    )
    text = report(results)
    assert "  FAIL  analysts may trade (wrong)" in text
    assert "        decision: expected allow, got deny" in text
    assert (
        "        decided: deny (insufficient_scope) by rule trade, missing fininfo:trade, HTTP 200"
        in text
    )
    assert "  PASS  quotes are readable" in text
    assert text.endswith("1 passed, 1 failed")


async def test_each_case_gets_fresh_buckets() -> None:
    bundle = load_bundle(FINANCE)
    trade = {
        "caller": {"subject": "bob", "client_id": "desk", "scopes": ["fininfo:trade"]},
        "call": {
            "upstream": "fininfo",
            "tool": "place_trade",
            "arguments": {"symbol": "ACME", "side": "buy", "quantity": 1},
        },
    }
    cases = parse_cases(
        {
            "cases": [
                {"name": "ten trades", **trade, "repeat": 10, "expect": {"decision": "allow"}},
                {"name": "ten more", **trade, "repeat": 10, "expect": {"decision": "allow"}},
                {
                    "name": "eleven",
                    **trade,
                    "repeat": 11,
                    "expect": {"decision": "deny", "reason": "rate_limited"},
                },
            ]
        },
        "inline",
        {},
    )
    results = await run_cases(bundle, cases)
    assert [result.passed for result in results] == [True, True, True], report(results)


async def test_dry_run_expectations_are_checked() -> None:
    bundle = load_bundle(FINANCE)
    night_trade = {
        "caller": {
            "subject": "bob",
            "scopes": ["fininfo:trade"],
            "claims": {"market_hour": 23},
        },
        "call": {
            "upstream": "fininfo",
            "tool": "place_trade",
            "arguments": {"symbol": "ACME", "side": "buy", "quantity": 1},
        },
    }
    cases = parse_cases(
        {
            "cases": [
                {
                    "name": "expects none",
                    **night_trade,
                    "expect": {"decision": "allow", "dry_run": []},
                },
                {
                    "name": "expects allow",
                    **night_trade,
                    "expect": {"decision": "allow", "dry_run": [{"decision": "allow"}]},
                },
            ]
        },
        "inline",
        {},
    )
    results = await run_cases(bundle, cases)
    assert results[0].mismatches == (
        "dry_run: expected none, got rule trade-market-hours would deny (denied_by_rule)",
    )
    assert results[1].mismatches == (
        "dry_run: expected one with decision allow, "
        "got rule trade-market-hours would deny (denied_by_rule)",
    )


async def test_real_tokens_are_verified_by_the_bundles_issuers(tmp_path: Path) -> None:
    test_bundle = write_test_bundle(tmp_path)
    good = test_bundle.token("fininfo:read")
    expired = test_bundle.token("fininfo:read", lifetime=-3600)
    cases = parse_cases(
        {
            "cases": [
                {
                    "name": "a valid token reads quotes",
                    "caller": {"token_env": "GOOD_TOKEN"},
                    "call": {"upstream": "fininfo", "tool": "get_quote"},
                    "expect": {"decision": "allow", "rule": "read"},
                },
                {
                    "name": "an expired token is refused",
                    "caller": {"token": expired},
                    "call": {"upstream": "fininfo", "tool": "get_quote"},
                    "expect": {"decision": "deny", "reason": "token_expired", "status": 401},
                },
                {
                    "name": "an api key by id",
                    "caller": {"api_key": "ci-bot"},
                    "call": {"upstream": "fininfo", "tool": "place_trade"},
                    "expect": {"decision": "deny", "missing_scopes": ["fininfo:trade"]},
                },
            ]
        },
        "inline",
        {"GOOD_TOKEN": good},
    )
    results = await run_cases(test_bundle.bundle, cases)
    assert [result.passed for result in results] == [True, True, True], report(results)


async def test_the_report_never_quotes_a_token(tmp_path: Path) -> None:
    test_bundle = write_test_bundle(tmp_path)
    token = test_bundle.token("fininfo:read", lifetime=-3600)
    case = {
        "name": "expired but expected to pass",
        "caller": {"token": token},
        "call": {"upstream": "fininfo", "tool": "get_quote"},
        "expect": {"decision": "allow"},
    }
    results = await run_cases(test_bundle.bundle, parse_cases({"cases": [case]}, "inline", {}))
    text = report(results, verbose=True)
    assert "FAIL" in text
    assert token not in text
    assert token.split(".")[2] not in text
