"""Running policy tests: each case as the request Envoy would send, decided by the same
``CheckPipeline.check`` the service runs, and compared with what the case expects.

Every case gets fresh in-process rate-limit buckets; ``repeat: N`` sends the call N times and
checks the last answer, for limits. ``explain`` builds its request and reads its outcome the
same way (``http_request_for``, ``principal_for``, ``outcome_of``). Each result carries what
its case exercised (``coverage.CaseTrace``), for the coverage ``test`` reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policy_service.authoring.cases import Call, Caller, Case, Expectation
from policy_service.authoring.coverage import CaseTrace, note_limits, trace_case
from policy_service.decisions.model import Allow, Decision, Deny, Serve
from policy_service.decisions.render import http_status_of
from policy_service.identity.principal import CredentialKind, Principal
from policy_service.pipeline import CheckPipeline, GivenPrincipal
from policy_service.policy.model import CompiledBundle, UpstreamPolicy
from policy_service.request.model import HttpRequest, UpstreamProtocol
from policy_service.state import BundleState
from policy_service.telemetry.record import CheckRecord, DryRunRecord


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
    trace: CaseTrace = field(default_factory=CaseTrace)

    @property
    def passed(self) -> bool:
        return not self.mismatches


# --- deciding a case --------------------------------------------------------------------


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


def gateway_for(bundle: CompiledBundle, state: BundleState, caller: Caller | None) -> CheckPipeline:
    """A pipeline with fresh buckets (cases do not spend each other's budget), identifying
    the case's caller as given, or by its real token, or as nobody."""
    principal = principal_for(bundle, caller) if caller is not None else None
    if principal is None:
        return CheckPipeline(state)
    return CheckPipeline(state, identity=GivenPrincipal(principal))


async def decide_case(
    bundle: CompiledBundle, case: Case, gateway: CheckPipeline
) -> tuple[Outcome, CaseTrace]:
    upstream = bundle.by_name[case.call.upstream]
    request = http_request_for(upstream, case.call, case.caller)
    outcome: Outcome | None = None
    record: CheckRecord | None = None
    limits: dict[str, bool] = {}
    for _ in range(case.repeat):
        record = CheckRecord.new()
        decision = await gateway.check(request, record)
        note_limits(limits, record)
        outcome = outcome_of(decision, record)
    assert outcome is not None
    assert record is not None
    # The rules are walked again only once a case, after its calls: every repeat of a call
    # meets the rules the same way (only the buckets change), and the service's own checks
    # never pay for the walk.
    return outcome, trace_case(bundle, request, record, limits)


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
    state = BundleState.from_bundle(bundle)
    if any(case.caller is not None and case.caller.token is not None for case in cases):
        await state.jwt.start()  # real tokens need the issuers' keys
    results: list[CaseResult] = []
    try:
        for case in cases:
            gateway = gateway_for(bundle, state, case.caller)
            outcome, trace = await decide_case(bundle, case, gateway)
            results.append(CaseResult(case, outcome, mismatches(case.expect, outcome), trace))
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
