"""Policy tests: declarative cases a bundle must decide as expected (``policy-service test``).

A case file is YAML (problems in it raise ``CaseFileError``)::

    cases:
      - name: analysts read quotes
        caller: {subject: alice, scopes: [quotes:read], claims: {department: research}}
        call: {upstream: fininfo, tool: get_quote, arguments: {ticker: ACME}}
        expect: {decision: allow, rule: read-quotes}

A caller is given by claims (``subject``, ``client_id``, ``issuer``, ``scopes``,
``claims``), by an API key's id in the bundle (``api_key: ci-bot``: no secret needed), by a
real token (``token:`` or ``token_env:``, verified against the bundle's issuers), or left
out for an anonymous call. A call names an upstream and one of ``tool``, ``resource``,
``prompt``, ``method`` or ``a2a_method``. Cases run through the same ``Gateway.check`` the
service runs, each with fresh in-process rate-limit buckets; ``repeat: N`` sends the call N
times and checks the last answer, for limits.

The file is checked as strictly as a bundle: unknown keys and wrong types are reported,
every problem at once, with the path where it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy_service.bundles.loader import parse_yaml
from policy_service.bundles.problems import Problems
from policy_service.bundles.shape import describe
from policy_service.decisions.model import Allow, Decision, Deny, Serve
from policy_service.decisions.render import http_status_of
from policy_service.errors import BundleError, BundleProblem, CaseFileError
from policy_service.identity.principal import CredentialKind, Principal
from policy_service.pipeline import Gateway, GatewayState
from policy_service.policy.model import CompiledBundle, UpstreamPolicy
from policy_service.request.model import HttpRequest, UpstreamProtocol
from policy_service.telemetry.record import CheckRecord, DryRunRecord

MCP_PROTOCOL_VERSION = "2025-11-25"
CALL_KINDS = ("tool", "resource", "prompt", "method", "a2a_method")
_CASE_KEYS = ("name", "caller", "call", "expect", "repeat")
_CALLER_KEYS = (
    "subject",
    "client_id",
    "issuer",
    "scopes",
    "claims",
    "api_key",
    "token",
    "token_env",
)
_CALL_KEYS = ("upstream", *CALL_KINDS, "arguments", "headers", "protocol_version")
_EXPECT_KEYS = ("decision", "reason", "rule", "missing_scopes", "status", "dry_run")
_DRY_RUN_KEYS = ("name", "decision", "reason")
MAX_REPEAT = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a case calls as: given claims, an API key id, a token, or nobody."""

    subject: str = "test-subject"
    client_id: str | None = None
    issuer: str | None = None
    scopes: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    api_key: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Call:
    upstream: str
    kind: str  # one of CALL_KINDS
    target: str
    arguments: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    protocol_version: str = MCP_PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Expectation:
    decision: str  # "allow" or "deny"
    reason: str | None = None
    rule: str | None = None
    missing_scopes: tuple[str, ...] | None = None
    status: int | None = None
    dry_run: tuple[Mapping[str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    caller: Caller | None
    call: Call
    expect: Expectation
    repeat: int = 1


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the bundle decided, in the terms a case speaks."""

    decision: str
    reason: str
    rules: tuple[str, ...]
    missing_scopes: tuple[str, ...]
    status: int | None
    dry_runs: tuple[DryRunRecord, ...] = ()
    message: str = ""

    def describe(self) -> str:
        text = f"{self.decision} ({self.reason})"
        if self.rules:
            text += f" by rule {', '.join(self.rules)}"
        if self.missing_scopes:
            text += f", missing {' '.join(self.missing_scopes)}"
        if self.status is not None:
            text += f", HTTP {self.status}"
        return text


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    outcome: Outcome
    mismatches: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.mismatches


# --- reading a case file ----------------------------------------------------------------


def load_cases(path: Path, environ: Mapping[str, str] | None = None) -> tuple[Case, ...]:
    """Read and check a case file; a ``CaseFileError`` lists every problem in it."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "cannot be read"
        raise CaseFileError([BundleProblem(source, "", reason.lower())]) from None
    try:
        document = parse_yaml(text, source)
    except BundleError as exc:  # the YAML reader speaks of bundles; this is a case file
        raise CaseFileError(exc.problems) from None
    return parse_cases(document, source, os.environ if environ is None else environ)


def parse_cases(document: Any, source: str, environ: Mapping[str, str]) -> tuple[Case, ...]:
    problems = Problems(source)
    if not isinstance(document, Mapping) or not isinstance(document.get("cases"), list):
        problems.add("", "expected a mapping with a 'cases' list")
        raise CaseFileError(problems.items)
    _unknown_keys(document, ("cases",), "", problems)
    cases: list[Case] = []
    names: set[str] = set()
    for index, raw in enumerate(document["cases"]):
        path = f"cases[{index}]"
        before = len(problems)
        if not isinstance(raw, Mapping):
            problems.add(path, f"expected a mapping, got {describe(raw)}")
            continue
        _unknown_keys(raw, _CASE_KEYS, path, problems)
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.add(f"{path}.name", "is required: say what the case shows")
            name = f"case {index + 1}"
        elif name in names:
            problems.add(f"{path}.name", f"duplicate case name '{name}'")
        names.add(name)
        caller = _caller(raw.get("caller"), f"{path}.caller", environ, problems)
        call = _call(raw.get("call"), f"{path}.call", problems)
        expect = _expectation(raw.get("expect"), f"{path}.expect", problems)
        repeat = raw.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= MAX_REPEAT:
            problems.add(f"{path}.repeat", f"must be a whole number from 1 to {MAX_REPEAT}")
        if len(problems) == before and call is not None and expect is not None:
            cases.append(Case(name, caller, call, expect, repeat))
    if not document["cases"]:
        problems.add("cases", "is empty: a test file needs at least one case")
    if problems.items:
        raise CaseFileError(problems.items)
    return tuple(cases)


def _unknown_keys(
    value: Mapping[Any, Any], known: Sequence[str], path: str, problems: Problems
) -> None:
    for key in value:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            problems.add(where, f"unknown key '{key}'; expected one of: {', '.join(known)}")


def _string(value: Any, path: str, problems: Problems, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            problems.add(path, "is required")
        return None
    if not isinstance(value, str) or not value:
        problems.add(path, f"expected a non-empty string, got {describe(value)}")
        return None
    return value


def _strings(value: Any, path: str, problems: Problems) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.add(path, f"expected a list of strings, got {describe(value)}")
        return None
    return tuple(value)


def _caller(raw: Any, path: str, environ: Mapping[str, str], problems: Problems) -> Caller | None:
    if raw is None:
        return None  # anonymous: no credential at all
    if not isinstance(raw, Mapping):
        problems.add(path, f"expected a mapping, got {describe(raw)}")
        return None
    _unknown_keys(raw, _CALLER_KEYS, path, problems)
    ways = [key for key in ("api_key", "token", "token_env") if key in raw]
    given = [key for key in ("subject", "client_id", "issuer", "scopes", "claims") if key in raw]
    if len(ways) > 1 or (ways and given):
        problems.add(path, "give claims (subject, scopes, ...), api_key or a token: one of them")
        return None
    if "api_key" in raw:
        key_id = _string(raw["api_key"], f"{path}.api_key", problems)
        return Caller(api_key=key_id) if key_id else None
    if "token_env" in raw:
        variable = _string(raw["token_env"], f"{path}.token_env", problems)
        if variable is None:
            return None
        if not environ.get(variable):
            problems.add(f"{path}.token_env", f"environment variable '{variable}' is not set")
            return None
        return Caller(token=environ[variable])
    if "token" in raw:
        token = _string(raw["token"], f"{path}.token", problems)
        return Caller(token=token) if token else None
    claims = raw.get("claims", {})
    if not isinstance(claims, Mapping) or not all(isinstance(key, str) for key in claims):
        problems.add(f"{path}.claims", f"expected a mapping, got {describe(claims)}")
        claims = {}
    subject = _string(raw.get("subject"), f"{path}.subject", problems)
    subject = subject or (claims.get("sub") if isinstance(claims.get("sub"), str) else None)
    return Caller(
        subject=subject or "test-subject",
        client_id=_string(raw.get("client_id"), f"{path}.client_id", problems),
        issuer=_string(raw.get("issuer"), f"{path}.issuer", problems),
        scopes=_strings(raw.get("scopes"), f"{path}.scopes", problems) or (),
        claims=dict(claims),
    )


def _call(raw: Any, path: str, problems: Problems) -> Call | None:
    if not isinstance(raw, Mapping):
        problems.add(path, "is required: a mapping with upstream and what is called")
        return None
    _unknown_keys(raw, _CALL_KEYS, path, problems)
    upstream = _string(raw.get("upstream"), f"{path}.upstream", problems, required=True)
    kinds = [kind for kind in CALL_KINDS if kind in raw]
    if len(kinds) != 1:
        problems.add(path, f"name exactly one of: {', '.join(CALL_KINDS)}")
        return None
    kind = kinds[0]
    target = _string(raw[kind], f"{path}.{kind}", problems)
    arguments = raw.get("arguments")
    if arguments is not None and not isinstance(arguments, Mapping):
        problems.add(f"{path}.arguments", f"expected a mapping, got {describe(arguments)}")
        arguments = None
    headers = raw.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        problems.add(f"{path}.headers", "expected a mapping of header names to strings")
        headers = {}
    version = _string(raw.get("protocol_version"), f"{path}.protocol_version", problems)
    if upstream is None or target is None:
        return None
    return Call(
        upstream,
        kind,
        target,
        arguments,
        {name.lower(): value for name, value in headers.items()},
        version or MCP_PROTOCOL_VERSION,
    )


def _expectation(raw: Any, path: str, problems: Problems) -> Expectation | None:
    if not isinstance(raw, Mapping):
        problems.add(path, "is required: a mapping with at least the decision")
        return None
    _unknown_keys(raw, _EXPECT_KEYS, path, problems)
    decision = raw.get("decision")
    if decision not in ("allow", "deny"):
        problems.add(f"{path}.decision", "must be 'allow' or 'deny'")
        return None
    status = raw.get("status")
    if status is not None and (
        not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599
    ):
        problems.add(f"{path}.status", "must be an HTTP status code")
        status = None
    return Expectation(
        decision=decision,
        reason=_string(raw.get("reason"), f"{path}.reason", problems),
        rule=_string(raw.get("rule"), f"{path}.rule", problems),
        missing_scopes=_strings(raw.get("missing_scopes"), f"{path}.missing_scopes", problems),
        status=status,
        dry_run=_dry_run_expectations(raw.get("dry_run"), f"{path}.dry_run", problems),
    )


def _dry_run_expectations(
    raw: Any, path: str, problems: Problems
) -> tuple[Mapping[str, str], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        problems.add(path, f"expected a list, got {describe(raw)}")
        return None
    expected: list[Mapping[str, str]] = []
    for index, item in enumerate(raw):
        where = f"{path}[{index}]"
        if not isinstance(item, Mapping) or not all(isinstance(v, str) for v in item.values()):
            problems.add(where, "expected a mapping of name, decision and reason to strings")
            continue
        _unknown_keys(item, _DRY_RUN_KEYS, where, problems)
        expected.append(dict(item))
    return tuple(expected)


# --- checking cases against a bundle ----------------------------------------------------


def check_case_targets(bundle: CompiledBundle, cases: Sequence[Case], source: str) -> None:
    """Cases that can never run against this bundle (unknown upstream, issuer or key)."""
    problems = Problems(source)
    issuers = {issuer.name for issuer in bundle.issuers}
    keys = {key.id for key in bundle.api_keys}
    for index, case in enumerate(cases):
        path = f"cases[{index}]"
        upstream = bundle.by_name.get(case.call.upstream)
        if upstream is None:
            known = ", ".join(sorted(bundle.by_name))
            problems.add(
                f"{path}.call.upstream",
                f"the bundle has no upstream '{case.call.upstream}'; it has: {known}",
            )
        elif (case.call.kind == "a2a_method") != (upstream.protocol is UpstreamProtocol.A2A):
            problems.add(
                f"{path}.call.{case.call.kind}",
                f"'{upstream.name}' speaks {upstream.protocol}: "
                + (
                    "use a2a_method"
                    if upstream.protocol is UpstreamProtocol.A2A
                    else "use tool, resource, prompt or method"
                ),
            )
        caller = case.caller
        if caller is not None and caller.issuer is not None and caller.issuer not in issuers:
            problems.add(f"{path}.caller.issuer", f"the bundle has no issuer '{caller.issuer}'")
        if caller is not None and caller.api_key is not None and caller.api_key not in keys:
            problems.add(f"{path}.caller.api_key", f"the bundle has no api key '{caller.api_key}'")
    if problems.items:
        raise CaseFileError(problems.items)


def principal_for(bundle: CompiledBundle, caller: Caller) -> Principal | None:
    """The principal a case calls as; None when the credential must be verified for real."""
    if caller.token is not None:
        return None
    if caller.api_key is not None:
        entry = next(key for key in bundle.api_keys if key.id == caller.api_key)
        return Principal(entry.subject, "api-key", entry.id, entry.scopes, CredentialKind.API_KEY)
    issuer = caller.issuer or (bundle.issuers[0].name if bundle.issuers else "test-issuer")
    claims: dict[str, Any] = {"sub": caller.subject, **caller.claims}
    if caller.scopes:
        claims.setdefault("scope", " ".join(caller.scopes))
    if caller.client_id:
        claims.setdefault("client_id", caller.client_id)
    return Principal(
        caller.subject,
        issuer,
        caller.client_id,
        frozenset(caller.scopes),
        CredentialKind.JWT,
        claims=claims,
    )


def http_request_for(upstream: UpstreamPolicy, call: Call, caller: Caller | None) -> HttpRequest:
    """The request Envoy would send for ``call``: a JSON-RPC POST to the upstream's route."""
    headers = {"content-type": "application/json", **call.headers}
    if upstream.protocol is UpstreamProtocol.A2A:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": call.target, "params": {}}
        headers.setdefault("a2a-version", "1.0")
    else:
        headers.setdefault("accept", "application/json, text/event-stream")
        headers.setdefault("mcp-protocol-version", call.protocol_version)
        message = _mcp_message(call)
    if caller is not None and caller.token is not None:
        headers["authorization"] = f"Bearer {caller.token}"
    return HttpRequest(
        method="POST",
        path=f"{upstream.path_prefix}{'mcp' if upstream.protocol is UpstreamProtocol.MCP else ''}",
        headers=headers,
        body=json.dumps(message).encode(),
        host="gateway.test",
        context_extensions={"upstream": upstream.name},
    )


def _mcp_message(call: Call) -> dict[str, Any]:
    arguments = dict(call.arguments or {})
    if call.kind == "tool":
        return _jsonrpc("tools/call", {"name": call.target, "arguments": arguments})
    if call.kind == "resource":
        return _jsonrpc("resources/read", {"uri": call.target})
    if call.kind == "prompt":
        return _jsonrpc("prompts/get", {"name": call.target, "arguments": arguments})
    message = _jsonrpc(call.target, arguments)
    if call.target.startswith("notifications/"):
        del message["id"]  # notifications carry no id
    return message


def _jsonrpc(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": dict(params)}


def outcome_of(decision: Decision, record: CheckRecord) -> Outcome:
    if isinstance(decision, Allow):
        return Outcome("allow", decision.reason, decision.rules, (), None, record.dry_runs)
    if isinstance(decision, Serve):
        return Outcome("allow", decision.reason, (), (), 200, record.dry_runs)
    assert isinstance(decision, Deny)
    return Outcome(
        "deny",
        decision.reason,
        (decision.rule,) if decision.rule else (),
        decision.missing_scopes,
        http_status_of(decision),
        record.dry_runs,
        decision.message,
    )


async def decide_case(bundle: CompiledBundle, case: Case, gateway: Gateway) -> Outcome:
    upstream = bundle.by_name[case.call.upstream]
    request = http_request_for(upstream, case.call, case.caller)
    principal = principal_for(bundle, case.caller) if case.caller is not None else None
    outcome: Outcome | None = None
    for _ in range(case.repeat):
        record = CheckRecord.new()
        decision = await gateway.check(request, record, principal=principal)
        outcome = outcome_of(decision, record)
    assert outcome is not None
    return outcome


def mismatches(expect: Expectation, got: Outcome) -> tuple[str, ...]:
    found: list[str] = []
    if expect.decision != got.decision:
        found.append(f"decision: expected {expect.decision}, got {got.decision}")
    if expect.reason is not None and expect.reason != got.reason:
        found.append(f"reason: expected {expect.reason}, got {got.reason}")
    if expect.rule is not None and expect.rule not in got.rules:
        shown = ", ".join(got.rules) if got.rules else "no rule"
        found.append(f"rule: expected {expect.rule}, got {shown}")
    if expect.missing_scopes is not None and sorted(expect.missing_scopes) != sorted(
        got.missing_scopes
    ):
        found.append(
            f"missing_scopes: expected [{' '.join(sorted(expect.missing_scopes))}], "
            f"got [{' '.join(got.missing_scopes)}]"
        )
    if expect.status is not None and expect.status != got.status:
        found.append(f"status: expected {expect.status}, got {got.status or 'none (allowed)'}")
    if expect.dry_run is not None:
        found.extend(_dry_run_mismatches(expect.dry_run, got.dry_runs))
    return tuple(found)


def _dry_run_mismatches(
    expected: tuple[Mapping[str, str], ...], got: tuple[DryRunRecord, ...]
) -> list[str]:
    if not expected and got:
        return [f"dry_run: expected none, got {', '.join(_show_dry_run(d) for d in got)}"]
    found: list[str] = []
    for item in expected:
        if not any(
            all(getattr(record, key) == value for key, value in item.items()) for record in got
        ):
            wanted = ", ".join(f"{key} {value}" for key, value in item.items())
            shown = ", ".join(_show_dry_run(d) for d in got) or "none"
            found.append(f"dry_run: expected one with {wanted}, got {shown}")
    return found


def _show_dry_run(record: DryRunRecord) -> str:
    return f"{record.source} {record.name} would {record.decision} ({record.reason})"


async def run_cases(bundle: CompiledBundle, cases: Sequence[Case]) -> list[CaseResult]:
    state = GatewayState.from_bundle(bundle)
    if any(case.caller is not None and case.caller.token is not None for case in cases):
        await state.jwt.start()  # real tokens need the issuers' keys
    results: list[CaseResult] = []
    try:
        for case in cases:
            gateway = Gateway(state)  # fresh buckets: cases do not spend each other's budget
            outcome = await decide_case(bundle, case, gateway)
            results.append(CaseResult(case, outcome, mismatches(case.expect, outcome)))
    finally:
        await state.jwt.aclose()
    return results


def report(results: Sequence[CaseResult], *, verbose: bool = False) -> str:
    """The human report: one line a case, the differences under each failure."""
    lines: list[str] = []
    for result in results:
        mark = "PASS" if result.passed else "FAIL"
        lines.append(f"  {mark}  {result.case.name}")
        if not result.passed:
            lines.extend(f"        {mismatch}" for mismatch in result.mismatches)
            lines.append(f"        decided: {result.outcome.describe()}")
        elif verbose:
            lines.append(f"        decided: {result.outcome.describe()}")
    failed = sum(1 for result in results if not result.passed)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)
