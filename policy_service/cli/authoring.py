"""For the people who write policy: ``lint``, ``test``, ``explain``, ``schema``, ``hash-key``.

policy-service lint BUNDLE ...             validate bundles; non-zero exit on any problem
policy-service test BUNDLE [CASES ...]     run policy tests and report their coverage;
                                           non-zero exit on any failure
    both: --format text|json|junit [--output FILE], the report for CI
policy-service explain BUNDLE --upstream U --tool T [--scope S ...]   why one request is
                                           decided the way it is
policy-service schema [--cases]            print the JSON Schema of the bundle format, or of
                                           the policy test case file
policy-service schema --write DIR          both schemas into DIR, its YAML files pointed at them
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policy_service.cli.reports import ReportOutput, add_report_flags, percent
from policy_service.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from policy_service.authoring.reports import CaseFileRun
    from policy_service.cli.flags import Commands
    from policy_service.policy.model import CompiledBundle
    from policy_service.ratelimits.limiter import RateLimiter

CASES_SUFFIX = ".cases.yaml"
BUNDLE_SCHEMA_FILE = "bundle.schema.json"
CASES_SCHEMA_FILE = "cases.schema.json"
SCHEMA_COMMENT = "# yaml-language-server: $schema="


def register(commands: Commands) -> None:
    lint = commands.add_parser("lint", help="validate bundles; non-zero exit on any problem")
    lint.add_argument("bundles", nargs="+", help="bundle files or directories")
    add_report_flags(lint)
    lint.set_defaults(run=_cmd_lint)

    hash_key = commands.add_parser(
        "hash-key", help="print the SHA-256 of an API key read from stdin"
    )
    hash_key.set_defaults(run=_cmd_hash_key)

    test = commands.add_parser(
        "test",
        help="run a bundle's policy tests and report coverage; non-zero exit when any case fails",
        description="Decide each case with the bundle, as the service would, and compare "
        "with what the case expects. Without CASES, the tests beside the bundle are run: "
        f"NAME{CASES_SUFFIX} next to NAME.yaml, or every *{CASES_SUFFIX} in a bundle directory. "
        "Then say which rules, conditions and limits the cases exercised, and list the rest.",
    )
    test.add_argument("bundle", help="bundle file or directory")
    test.add_argument(
        "cases", nargs="*", help=f"case files (default: the bundle's *{CASES_SUFFIX})"
    )
    test.add_argument("-v", "--verbose", action="store_true", help="show every decision")
    test.add_argument(
        "--min-coverage",
        type=percent,
        metavar="PERCENT",
        help="exit 1 when fewer than PERCENT of the bundle's rules decided a case "
        "(coverage is reported either way)",
    )
    add_report_flags(test)
    test.set_defaults(run=_cmd_test)

    explain = commands.add_parser(
        "explain",
        help="show how one request is decided: rule by rule, scopes, limits",
        description="Describe the request by flags, or pick a case from a case file with "
        "--case FILE --name NAME.",
    )
    explain.add_argument("bundle", help="bundle file or directory")
    explain.add_argument("--case", help="a case file to take the request from")
    explain.add_argument("--name", help="the case's name in --case")
    call = explain.add_argument_group("the call")
    call.add_argument("--upstream", help="the upstream's name in the bundle")
    target = call.add_mutually_exclusive_group()
    target.add_argument("--tool", help="a tools/call of this tool")
    target.add_argument("--resource", help="a resources/read of this URI")
    target.add_argument("--prompt", help="a prompts/get of this prompt")
    target.add_argument("--method", help="another MCP method, e.g. tools/list")
    target.add_argument("--a2a-method", help="an A2A method, e.g. SendMessage")
    call.add_argument("--args", help="the tool's or prompt's arguments as a JSON object")
    caller = explain.add_argument_group("the caller (default: no credential)")
    caller.add_argument("--sub", help="subject")
    caller.add_argument("--client-id", help="the calling client's id")
    caller.add_argument("--issuer", help="the bundle's issuer name (default: its first)")
    caller.add_argument(
        "--scope", action="append", default=[], help="a scope the caller holds (repeatable)"
    )
    caller.add_argument("--claims", help="more claims as a JSON object")
    caller.add_argument("--api-key", help="act as this api_keys id from the bundle")
    caller.add_argument(
        "--token-env", help="verify the token in this environment variable for real"
    )
    explain.add_argument(
        "--redis-url",
        help="read the live buckets from this Redis (a zero-token take: nothing is spent)",
    )
    explain.add_argument(
        "--redis-key-prefix", default="policy-service", help="the hash tag the service's keys use"
    )
    explain.set_defaults(run=_cmd_explain)

    schema = commands.add_parser(
        "schema",
        help="print the JSON Schema of the bundle format (or, with --cases, of case files)",
    )
    schema.add_argument(
        "--cases",
        action="store_true",
        help=f"the schema of policy test case files (*{CASES_SUFFIX}) instead",
    )
    schema.add_argument(
        "--write",
        metavar="DIR",
        help=f"write both schemas into DIR ({BUNDLE_SCHEMA_FILE}, {CASES_SCHEMA_FILE}) and "
        f"point the '{SCHEMA_COMMENT}' line of DIR's YAML files at them, so editors check "
        "a policy folder wherever it lives",
    )
    schema.set_defaults(run=_cmd_schema)


def _cmd_test(args: argparse.Namespace) -> int:
    from policy_service.authoring.coverage import coverage_of, render_coverage
    from policy_service.authoring.reports import cases_json, cases_junit
    from policy_service.bundles.loader import load_bundle

    bundle_path = Path(args.bundle)
    case_paths = [Path(path) for path in args.cases] or cases_beside(bundle_path)
    if not case_paths:
        raise ConfigError(
            f"no case files given and none found beside {bundle_path} (*{CASES_SUFFIX})"
        )
    out = ReportOutput(args)
    try:
        bundle = load_bundle(bundle_path)
        runs = run_case_files_for(bundle, case_paths, str(bundle_path), out.say, args.verbose)
    except BundleError as exc:
        print(exc, file=sys.stderr)
        return 1
    coverage = coverage_of(bundle, (result.trace for run in runs for result in run.results))
    for line in render_coverage(coverage).splitlines():
        out.say(line)
    below = args.min_coverage is not None and coverage.below(args.min_coverage)
    if below:
        out.say(
            f"rules covered {coverage.rules_percent}%, below --min-coverage {args.min_coverage:g}%",
            error=True,
        )
    if args.format == "json":
        out.finish(cases_json(str(bundle_path), bundle.revision, runs, coverage))
    elif args.format == "junit":
        out.finish(cases_junit(runs, coverage, args.min_coverage))
    else:
        out.finish()
    failed = any(not result.passed for run in runs for result in run.results)
    return 1 if failed or below else 0


def run_case_files(
    bundle: CompiledBundle, case_paths: Sequence[Path], label: str, *, verbose: bool = False
) -> int:
    """Run each case file against ``bundle``, printing its report; how many cases failed.
    ``sign`` (which refuses to sign when one fails) runs the tests this way."""
    runs = run_case_files_for(bundle, case_paths, label, print, verbose)
    return sum(1 for run in runs for result in run.results if not result.passed)


def run_case_files_for(
    bundle: CompiledBundle,
    case_paths: Sequence[Path],
    label: str,
    say: Callable[[str], None],
    verbose: bool = False,
) -> list[CaseFileRun]:
    """Run each case file against ``bundle``, saying its report as it is decided.

    Raises ``BundleError`` for a case file that is malformed or names what is not there.
    """
    from policy_service.authoring.cases import check_case_targets, load_cases
    from policy_service.authoring.reports import CaseFileRun
    from policy_service.authoring.runner import report, run_cases

    runs: list[CaseFileRun] = []
    for path in case_paths:
        cases = load_cases(path)
        check_case_targets(bundle, cases, str(path))
        results = asyncio.run(run_cases(bundle, cases))
        say(f"{path} against {label} (revision {bundle.revision})")
        for line in report(results, verbose=verbose).splitlines():
            say(line)
        runs.append(CaseFileRun(path, results))
    return runs


def cases_beside(bundle: Path) -> list[Path]:
    """The policy tests that go with a bundle: NAME.cases.yaml beside NAME.yaml, or every
    *.cases.yaml in a bundle directory."""
    if bundle.is_dir():
        return sorted(bundle.glob(f"*{CASES_SUFFIX}"))
    beside = bundle.with_name(bundle.name.removesuffix(bundle.suffix) + CASES_SUFFIX)
    return [beside] if beside.is_file() else []


def _cmd_explain(args: argparse.Namespace) -> int:
    from policy_service.authoring.cases import check_case_targets, load_cases, parse_cases
    from policy_service.authoring.explain import explain, render
    from policy_service.bundles.loader import load_bundle

    bundle = load_bundle(args.bundle)
    if args.case:
        if not args.name:
            raise ConfigError("--case needs --name, the case to explain")
        by_name = {case.name: case for case in load_cases(Path(args.case))}
        if args.name not in by_name:
            raise ConfigError(f"{args.case} has no case named '{args.name}'")
        case = by_name[args.name]
    else:
        # The flags make a one-case file, so they are checked exactly as a case file is.
        document: dict[str, Any] = {
            "name": "explain",
            "call": _call_from_flags(args),
            "expect": {"decision": "allow"},  # unused: explain reports, it does not judge
        }
        caller = _caller_from_flags(args)
        if caller is not None:  # no caller flags: an anonymous call, as in a case file
            document["caller"] = caller
        case = parse_cases({"cases": [document]}, "command line", os.environ)[0]
    check_case_targets(bundle, [case], args.case or "command line")

    async def run() -> str:
        limiter = _live_limiter(args) if args.redis_url else None
        try:
            return render(await explain(bundle, case.caller, case.call, live_limiter=limiter))
        finally:
            if limiter is not None:
                await limiter.aclose()

    print(asyncio.run(run()))
    return 0


def _json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise ConfigError(
            f'{flag} must be a JSON object, e.g. \'{{"path": "/public/a"}}\''
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object")
    return value


def _caller_from_flags(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.api_key:
        return {"api_key": args.api_key}
    if args.token_env:
        return {"token_env": args.token_env}
    given = {
        "subject": args.sub,
        "client_id": args.client_id,
        "issuer": args.issuer,
        "scopes": args.scope or None,
        "claims": _json_object(args.claims, "--claims"),
    }
    present = {key: value for key, value in given.items() if value is not None}
    return present or None


def _call_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    if not args.upstream:
        raise ConfigError("say which upstream: --upstream NAME (or use --case FILE --name NAME)")
    call: dict[str, Any] = {"upstream": args.upstream}
    for kind in ("tool", "resource", "prompt", "method", "a2a_method"):
        value = getattr(args, kind)
        if value is not None:
            call[kind] = value
    if len(call) == 1:
        raise ConfigError(
            "say what is called: --tool, --resource, --prompt, --method or --a2a-method"
        )
    arguments = _json_object(args.args, "--args")
    if arguments is not None:
        call["arguments"] = arguments
    return call


def _live_limiter(args: argparse.Namespace) -> RateLimiter:
    from policy_service.ratelimits.limiter import build_limiter
    from policy_service.ratelimits.redis_store import RedisSettings

    # A generous timeout: this is one read by a person, not a check on the request path.
    return build_limiter(
        RedisSettings(url=args.redis_url, key_prefix=args.redis_key_prefix, timeout_seconds=1.0)
    )


def _cmd_schema(args: argparse.Namespace) -> int:
    if args.write:
        return _write_schemas(Path(args.write))
    if args.cases:
        from policy_service.authoring.cases import cases_schema_text

        sys.stdout.write(cases_schema_text())
        return 0
    from policy_service.bundles.schema import bundle_schema_text

    sys.stdout.write(bundle_schema_text())
    return 0


def _write_schemas(folder: Path) -> int:
    """The schemas beside the policy, and its YAML files pointed at them by a plain file
    name: a relative path into the repository (the examples' own) breaks once the folder is
    copied elsewhere, and a path into this install breaks with the next one."""
    from policy_service.authoring.cases import cases_schema_text
    from policy_service.bundles.schema import bundle_schema_text

    if not folder.is_dir():
        raise ConfigError(f"--write {folder}: not a folder")
    try:
        (folder / BUNDLE_SCHEMA_FILE).write_text(bundle_schema_text(), encoding="utf-8")
        (folder / CASES_SCHEMA_FILE).write_text(cases_schema_text(), encoding="utf-8")
        print(f"wrote {folder / BUNDLE_SCHEMA_FILE} and {folder / CASES_SCHEMA_FILE}")
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            # Only a line that names one of our schemas: any other YAML is left alone.
            if not lines or not lines[0].startswith(SCHEMA_COMMENT):
                continue
            named = lines[0].removeprefix(SCHEMA_COMMENT).strip().rsplit("/", 1)[-1]
            if named not in (BUNDLE_SCHEMA_FILE, CASES_SCHEMA_FILE):
                continue
            lines[0] = f"{SCHEMA_COMMENT}{named}\n"
            path.write_text("".join(lines), encoding="utf-8")
            print(f"{path}: $schema={named}")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--write {folder}: {exc}") from None
    return 0


def _cmd_lint(args: argparse.Namespace) -> int:
    from policy_service.authoring.findings import lint_findings
    from policy_service.authoring.reports import LintResult, lint_json, lint_junit
    from policy_service.bundles.loader import load_bundle

    out = ReportOutput(args)
    results: list[LintResult] = []
    for path in args.bundles:
        try:
            bundle = load_bundle(path)
        except BundleError as exc:
            results.append(LintResult(path, problems=tuple(exc.problems)))
            out.say(str(exc), error=True)
            continue
        findings = lint_findings(bundle)
        results.append(LintResult(path, bundle.revision, findings=tuple(findings)))
        if findings:
            count = len(findings)
            out.say(
                f"{path}: loads, but {count} rule{'s' if count != 1 else ''} will not do "
                "what they say:",
                error=True,
            )
            for finding in findings:
                out.say(f"  {path}: {finding}", error=True)
            continue
        rules = sum(len(upstream.rules) for upstream in bundle.upstreams)
        out.say(
            f"{path}: ok (revision {bundle.revision}; {len(bundle.upstreams)} upstreams, "
            f"{rules} rules, {len(bundle.limits)} limits, {len(bundle.issuers)} issuers, "
            f"{len(bundle.api_keys)} api keys)"
        )
    if args.format == "json":
        out.finish(lint_json(results))
    elif args.format == "junit":
        out.finish(lint_junit(results))
    else:
        out.finish()
    return 0 if all(result.ok for result in results) else 1


def _cmd_hash_key(args: argparse.Namespace) -> int:
    from policy_service.identity.apikeys import hash_api_key

    # From stdin, so the key never lands in shell history or the process list.
    key = sys.stdin.readline().strip()
    if not key:
        print("hash-key: give the API key on standard input", file=sys.stderr)
        return 2
    print(hash_api_key(key))
    return 0
