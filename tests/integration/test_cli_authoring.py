"""``policy-service test``, ``explain`` and ``schema`` as a security engineer runs them."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from policy_service.authoring.cases import Caller
from policy_service.authoring.runner import principal_for
from policy_service.bundles.loader import load_bundle
from policy_service.dev.redis_server import RedisServer
from policy_service.ratelimits.keys import claims_for
from policy_service.ratelimits.limiter import build_limiter
from policy_service.ratelimits.redis_store import RedisSettings
from policy_service.request.model import CallTarget, TargetKind
from tests.integration.test_cli import run

ROOT = Path(__file__).resolve().parents[2]
FINANCE = ROOT / "examples" / "finance"


def test_test_runs_the_cases_beside_the_bundle_and_exits_zero() -> None:
    result = run("test", str(FINANCE / "bundle.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  PASS  an analyst reads a quote" in result.stdout
    # The count closes the cases; coverage follows it.
    assert result.stdout.rstrip().endswith(
        "11 passed, 0 failed\n"
        "coverage: rules 6/6, conditions 2/2 (both outcomes), limits 2/2 (1 exceeded)"
    )


def test_a_policy_change_that_breaks_a_case_exits_non_zero(tmp_path: Path) -> None:
    shutil.copytree(FINANCE, tmp_path / "finance")
    bundle = tmp_path / "finance" / "bundle.yaml"
    # A careless edit: the trade rule no longer needs the trade scope.
    bundle.write_text(bundle.read_text().replace("scopes: [fininfo:trade]", "scopes: []"))
    result = run("test", str(bundle))
    assert result.returncode == 1
    assert "  FAIL  an analyst cannot trade" in result.stdout
    assert "        decision: expected deny, got allow" in result.stdout
    assert "\n10 passed, 1 failed\ncoverage: " in result.stdout


def test_a_broken_case_file_is_reported_not_run(tmp_path: Path) -> None:
    cases = tmp_path / "broken.cases.yaml"
    cases.write_text(
        "cases:\n  - {name: a, call: {upstream: nope, tool: x}, expect: {decision: deny}}\n"
    )
    result = run("test", str(FINANCE / "bundle.yaml"), str(cases))
    assert result.returncode == 1
    assert "case file is invalid (1 problem):" in result.stderr
    assert "cases[0].call.upstream: the bundle has no upstream 'nope'; it has: fininfo" in (
        result.stderr
    )


def test_test_refuses_a_broken_bundle() -> None:
    invalid = ROOT / "tests" / "fixtures" / "bundles" / "invalid" / "when_unknown_variable.yaml"
    cases = FINANCE / "bundle.cases.yaml"
    result = run("test", str(invalid), str(cases))
    assert result.returncode == 1
    assert "unknown variable 'arg'" in result.stderr


def test_test_writes_junit_for_ci_and_still_prints_the_text(tmp_path: Path) -> None:
    shutil.copytree(FINANCE, tmp_path / "finance")
    report = tmp_path / "results" / "policy.xml"
    report.parent.mkdir()
    result = run(
        "test", str(tmp_path / "finance" / "bundle.yaml"), "--format", "junit",
        "--output", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  PASS  an analyst reads a quote" in result.stdout
    assert "coverage: rules 6/6," in result.stdout
    root = ET.parse(report).getroot()
    assert (root.get("tests"), root.get("failures")) == ("11", "0")
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("name") == str(tmp_path / "finance" / "bundle.cases.yaml")


def test_a_failing_case_exits_one_in_every_format(tmp_path: Path) -> None:
    shutil.copytree(FINANCE, tmp_path / "finance")
    bundle = tmp_path / "finance" / "bundle.yaml"
    bundle.write_text(bundle.read_text().replace("scopes: [fininfo:trade]", "scopes: []"))
    json_run = run("test", str(bundle), "--format", "json")
    assert json_run.returncode == 1
    document = json.loads(json_run.stdout)  # nothing but the report on stdout
    assert (document["passed"], document["failed"]) == (10, 1)
    junit_run = run("test", str(bundle), "--format", "junit")
    assert junit_run.returncode == 1
    assert ET.fromstring(junit_run.stdout).get("failures") == "1"


def test_min_coverage_fails_the_run_below_it(tmp_path: Path) -> None:
    shutil.copytree(FINANCE, tmp_path / "finance")
    cases = tmp_path / "finance" / "bundle.cases.yaml"
    # Only the first two cases: session and read decide; four rules of six are left.
    text = cases.read_text()
    cases.write_text(text[: text.index("  - name: an analyst cannot trade")])
    bundle = str(tmp_path / "finance" / "bundle.yaml")
    below = run("test", bundle, "--min-coverage", "34")
    assert below.returncode == 1
    assert "2 passed, 0 failed\ncoverage: rules 2/6," in below.stdout
    assert "uncovered: upstreams[0].rules[3] 'large-orders' never decided a case" in below.stdout
    assert "rules covered 33.3%, below --min-coverage 34%" in below.stderr
    met = run("test", bundle, "--min-coverage", "33")
    assert met.returncode == 0, met.stdout + met.stderr
    # Without the flag coverage is only reported.
    assert run("test", bundle).returncode == 0
    refused = run("test", bundle, "--min-coverage", "101")
    assert refused.returncode == 2
    assert "'101' is not a percentage from 0 to 100" in refused.stderr


def test_lint_writes_json_with_every_problem(tmp_path: Path) -> None:
    invalid = ROOT / "tests" / "fixtures" / "bundles" / "invalid" / "when_unknown_variable.yaml"
    result = run("lint", str(FINANCE / "bundle.yaml"), str(invalid), "--format", "json")
    assert result.returncode == 1
    document = json.loads(result.stdout)  # the ok line is held back: stdout is the report
    assert [(b["path"], b["ok"]) for b in document["bundles"]] == [
        (str(FINANCE / "bundle.yaml"), True),
        (str(invalid), False),
    ]
    assert document["bundles"][1]["problems"][0]["path"] == "upstreams[0].rules[0].when"
    assert "unknown variable 'arg'" in result.stderr  # problems still reach the terminal
    report = tmp_path / "lint.xml"
    junit = run("lint", str(FINANCE / "bundle.yaml"), "--format", "junit", "--output", str(report))
    assert junit.returncode == 0, junit.stderr
    assert ": ok (revision finance-2026-11-21;" in junit.stdout
    assert ET.parse(report).getroot().get("tests") == "1"


def test_the_readme_shows_what_test_prints_for_coverage() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    result = run("test", str(ROOT / "examples" / "ci-bots" / "bundle.yaml"), "--min-coverage", "90")
    assert result.returncode == 1
    shown = result.stdout.split("\n8 passed", 1)[1]
    assert f"```\n8 passed{shown}```" in readme, result.stdout
    assert f"(`{result.stderr.strip()}`)" in readme


def test_explain_from_flags() -> None:
    result = run(
        "explain",
        str(FINANCE / "bundle.yaml"),
        "--upstream", "fininfo",
        "--tool", "place_trade",
        "--args", '{"symbol": "ACME", "side": "buy", "quantity": 50000}',
        "--sub", "bob",
        "--scope", "fininfo:trade",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "decision   deny (denied_by_rule) by rule large-orders, HTTP 200"
    assert "  3. large-orders: target matches, when true, -> applies (deny)" in lines


def test_explain_a_case_by_name() -> None:
    result = run(
        "explain",
        str(FINANCE / "bundle.yaml"),
        "--case", str(FINANCE / "bundle.cases.yaml"),
        "--name", "an analyst cannot trade",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "missing scopes: fininfo:trade" in result.stdout


def test_explain_says_what_is_missing_from_the_command_line() -> None:
    result = run("explain", str(FINANCE / "bundle.yaml"), "--tool", "get_quote")
    assert result.returncode == 1
    assert "say which upstream: --upstream NAME" in result.stderr


async def test_explain_reads_live_buckets_from_redis_without_spending(
    clean_redis: RedisServer,
) -> None:
    # The gateway has taken three trades for this client already.
    bundle = load_bundle(FINANCE / "bundle.yaml")
    caller = Caller(subject="bob", client_id="desk", scopes=("fininfo:trade",))
    principal = principal_for(bundle, caller)
    assert principal is not None
    target = CallTarget(TargetKind.TOOL, "place_trade", "tools/call", 1)
    limiter = build_limiter(RedisSettings(url=clean_redis.url, timeout_seconds=2.0))
    try:
        for _ in range(3):
            await limiter.check(claims_for(bundle.limits, "fininfo", principal, [target]))
    finally:
        await limiter.aclose()
    args = (
        "explain",
        str(FINANCE / "bundle.yaml"),
        "--upstream", "fininfo",
        "--tool", "place_trade",
        "--args", '{"symbol": "ACME", "side": "buy", "quantity": 1}',
        "--sub", "bob",
        "--client-id", "desk",
        "--scope", "fininfo:trade",
        "--redis-url", clean_redis.url,
    )  # fmt: skip
    first = run(*args)
    second = run(*args)
    assert first.returncode == 0, first.stderr
    assert "limits (live buckets)" in first.stdout
    for result in (first, second):  # reading spent nothing (trades refill 10 an hour)
        trades = next(line for line in result.stdout.splitlines() if line.startswith("  trades:"))
        assert trades.endswith(": 7 of 10 left")


def test_schema_prints_the_published_schema() -> None:
    result = run("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    shipped = ROOT / "policy_service/gen/policy_service/bundle/v1/bundle.schema.json"
    assert schema == json.loads(shipped.read_text())


def test_schema_cases_prints_the_case_file_schema() -> None:
    result = run("schema", "--cases")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$id"] == "https://policy-service.dev/schemas/cases/v1/cases.schema.json"
    shipped = ROOT / "policy_service/gen/policy_service/cases/v1/cases.schema.json"
    assert schema == json.loads(shipped.read_text())


def test_schema_write_puts_the_schemas_beside_a_copied_policy_and_points_at_them(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "my-policy"
    shutil.copytree(FINANCE, policy)
    # A YAML file of the team's own naming another schema is left as it is.
    other = policy / "compose.yaml"
    other.write_text("# yaml-language-server: $schema=https://example.com/compose.json\na: 1\n")
    before = (policy / "bundle.yaml").read_text().splitlines()

    result = run("schema", "--write", str(policy))

    assert result.returncode == 0, result.stderr
    for name, schema, flags in (
        ("bundle.yaml", "bundle.schema.json", ()),
        ("bundle.cases.yaml", "cases.schema.json", ("--cases",)),
    ):
        lines = (policy / name).read_text().splitlines()
        assert lines[0] == f"# yaml-language-server: $schema={schema}"
        assert (policy / schema).read_text() == run("schema", *flags).stdout
        assert f"{policy / name}: $schema={schema}" in result.stdout
    assert (policy / "bundle.yaml").read_text().splitlines()[1:] == before[1:]
    assert before[0].endswith(
        "../../policy_service/gen/policy_service/bundle/v1/bundle.schema.json"
    )
    assert other.read_text().startswith("# yaml-language-server: $schema=https://example.com/")
    # Still the same policy: its tests pass where it now lives.
    assert run("test", str(policy / "bundle.yaml")).returncode == 0


def test_schema_write_wants_a_folder(tmp_path: Path) -> None:
    result = run("schema", "--write", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert "--write" in result.stderr
    assert "not a folder" in result.stderr
