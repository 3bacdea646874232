"""Coverage in ``policy-service test``: which rules decided a case, which conditions went
both ways, which limits a call matched, and exactly what is left uncovered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policy_service.authoring.cases import parse_cases
from policy_service.authoring.coverage import Coverage, coverage_of, render_coverage
from policy_service.authoring.runner import CaseResult, report, run_cases
from policy_service.bundles.loader import load_bundle
from policy_service.policy.model import CompiledBundle

BUNDLE = """\
version: v1
revision: coverage-test
issuers:
  - {name: corp, issuer: "https://idp.example.com", jwks_url: "https://idp.example.com/jwks",
     algorithms: [ES256]}
upstreams:
  - name: files
    path_prefix: /files/
    protocol: mcp
    resource: https://gw.example.com/files/mcp
    rules:
      - {name: session, methods: [initialize, tools/list]}
      - name: no-secrets
        tools: [read_file]
        effect: deny
        when: 'args.path.startsWith("/secret/")'
      - {name: read, tools: [read_file], scopes: ["files:read"]}
      - name: write-own
        tools: [write_file]
        when: 'args.path.startsWith("/home/" + principal.subject + "/")'
      - {name: audit-deletes, tools: [delete_file], effect: deny, dry_run: true}
      - {name: never, tools: [format_disk], effect: deny}
  - name: helper
    path_prefix: /agents/helper/
    protocol: a2a
    resource: https://gw.example.com/agents/helper
    rules:
      - {name: chat, a2a_methods: [SendMessage]}
limits:
  - {name: reads, rate: 2/min, key: [client], match: {tools: [read_file]}}
  - {name: writes, rate: 10/min, key: [client], match: {tools: [write_file]}}
  - {name: peeks, rate: 1/min, key: [client], shadow: true, match: {tools: [read_file]}}
"""

ALICE = {"subject": "alice", "client_id": "app", "scopes": ["files:read"]}


def files_call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"upstream": "files", "tool": tool, "arguments": arguments}


# Each case exercises one thing; the comment says what coverage it adds.
CASES: list[dict[str, Any]] = [
    {  # session decides
        "name": "a session starts",
        "caller": ALICE,
        "call": {"upstream": "files", "method": "initialize"},
        "expect": {"decision": "allow", "rule": "session"},
    },
    {  # no-secrets false (kept out), read decides; reads and peeks matched
        "name": "a public file is read",
        "caller": ALICE,
        "call": files_call("read_file", path="/public/a"),
        "expect": {"decision": "allow", "rule": "read"},
    },
    {  # no-secrets true: it decides
        "name": "a secret is refused",
        "caller": ALICE,
        "call": files_call("read_file", path="/secret/key"),
        "expect": {"decision": "deny", "rule": "no-secrets"},
    },
    {  # write-own false: it never applies, so it never decides
        "name": "a write elsewhere is refused",
        "caller": ALICE,
        "call": files_call("write_file", path="/tmp/x"),
        "expect": {"decision": "deny", "reason": "condition_not_met"},
    },
    {  # the dry-run rule records its would-be deny
        "name": "a delete would be refused by the dry-run rule",
        "caller": ALICE,
        "call": files_call("delete_file", path="/public/a"),
        "expect": {"decision": "deny", "reason": "no_matching_rule"},
    },
    {  # reads exceeded (and peeks, a shadow limit, records its refusal)
        "name": "the third read in a minute is rate limited",
        "caller": ALICE,
        "call": files_call("read_file", path="/public/b"),
        "repeat": 3,
        "expect": {"decision": "deny", "reason": "rate_limited"},
    },
    {  # stops at identity: exercises no rule
        "name": "no credential",
        "call": files_call("format_disk"),
        "expect": {"decision": "deny", "reason": "missing_credential"},
    },
]


@pytest.fixture
def bundle(tmp_path: Path) -> CompiledBundle:
    path = tmp_path / "bundle.yaml"
    path.write_text(BUNDLE)
    return load_bundle(path)


async def run(bundle: CompiledBundle, cases: list[dict[str, Any]]) -> list[CaseResult]:
    results = await run_cases(bundle, parse_cases({"cases": cases}, "inline", {}))
    assert all(result.passed for result in results), report(results)
    return results


async def coverage(bundle: CompiledBundle, cases: list[dict[str, Any]]) -> Coverage:
    return coverage_of(bundle, [result.trace for result in await run(bundle, cases)])


async def test_coverage_counts_and_the_exact_uncovered_list(bundle: CompiledBundle) -> None:
    found = await coverage(bundle, CASES)
    assert found.rules == (4, 7)  # session, no-secrets, read, audit-deletes
    assert found.conditions == (1, 2)  # no-secrets both ways; write-own only false
    assert [str(item) for item in found.uncovered()] == [
        "upstreams[0].rules[3] 'write-own' never decided a case",
        "upstreams[0].rules[3].when 'write-own' never true (no case made the rule apply)",
        "upstreams[0].rules[5] 'never' never decided a case",
        "upstreams[1].rules[0] 'chat' never decided a case",
        "limits[1] 'writes' never matched a case's call",
    ]
    assert render_coverage(found) == "\n".join(
        [
            "coverage: rules 4/7, conditions 1/2 (both outcomes), limits 2/3 (2 exceeded)",
            "  files: rules 4/6, conditions 1/2",
            "  helper: rules 0/1, conditions 0/0",
            *(f"uncovered: {item}" for item in found.uncovered()),
        ]
    )


async def test_limits_count_cases_that_matched_and_that_ran_short(
    bundle: CompiledBundle,
) -> None:
    found = await coverage(bundle, CASES)
    by_name = {limit.name: limit for limit in found.limits}
    # A repeated call is one case: two cases read, one of them ran the buckets short.
    assert (by_name["reads"].matched, by_name["reads"].exceeded) == (2, 1)
    assert (by_name["peeks"].matched, by_name["peeks"].exceeded) == (2, 1)
    assert (by_name["writes"].matched, by_name["writes"].exceeded) == (0, 0)


async def test_a_rule_refusing_for_missing_scopes_still_decided(bundle: CompiledBundle) -> None:
    found = await coverage(
        bundle,
        [
            {
                "name": "no scope",
                "caller": {"subject": "bob"},
                "call": files_call("read_file", path="/public/a"),
                "expect": {"decision": "deny", "reason": "insufficient_scope", "rule": "read"},
            }
        ],
    )
    decided = {rule.name: rule.decided for rule in found.upstreams[0].rules}
    assert decided == {
        "session": 0,
        "no-secrets": 0,
        "read": 1,
        "write-own": 0,
        "audit-deletes": 0,
        "never": 0,
    }


async def test_a_failing_condition_counts_the_way_it_acts(bundle: CompiledBundle) -> None:
    no_path = {"caller": ALICE, "expect": {"decision": "deny", "reason": "condition_error"}}
    found = await coverage(
        bundle,
        [
            # A deny rule fails closed: it applies, as if true.
            {"name": "read without a path", "call": files_call("read_file"), **no_path},
            # An allow rule fails closed: it is kept out, as if false.
            {"name": "write without a path", "call": files_call("write_file"), **no_path},
        ],
    )
    rules = {rule.name: rule for rule in found.upstreams[0].rules}
    secrets, write = rules["no-secrets"].condition, rules["write-own"].condition
    assert secrets is not None
    assert write is not None
    assert (secrets.applied, secrets.passed, secrets.failed) == (1, 0, 1)
    assert (write.applied, write.passed, write.failed) == (0, 1, 1)
    assert secrets.missing == "never false (no case got past the rule)"
    assert write.missing == "never true (no case made the rule apply)"
    assert rules["no-secrets"].decided == 1
    assert rules["write-own"].decided == 0


async def test_a_condition_no_case_reached_is_never_evaluated(bundle: CompiledBundle) -> None:
    found = await coverage(bundle, CASES[:1])
    assert "upstreams[0].rules[1].when 'no-secrets' never evaluated (no case reached the rule)" in [
        str(item) for item in found.uncovered()
    ]
    assert found.limits[0].matched == 0


async def test_min_coverage_compares_exactly(bundle: CompiledBundle) -> None:
    found = await coverage(bundle, CASES)
    assert found.rules_percent == 57.1  # 4 of 7, rounded for people
    assert found.below(57.15)  # 57.14...% is below 57.15 though both round to 57.1
    assert not found.below(57.14)
    assert not found.below(0)


def test_a_bundle_without_rules_is_fully_covered() -> None:
    empty = Coverage((), ())
    assert empty.rules == (0, 0)
    assert empty.rules_percent == 100.0
    assert not empty.below(100)
    assert render_coverage(empty) == (
        "coverage: rules 0/0, conditions 0/0 (both outcomes), limits 0/0 (0 exceeded)"
    )
