"""Replaying a recording (``serve --record``): each check decided again, and what changed.

Every recorded check is rebuilt as the request Envoy sent, minus its credential, and decided
by the same ``CheckPipeline.check`` the service runs, with the recorded caller standing in
for the credential check (as ``policy-service test`` does). Two decisions are compared per
check: a baseline (a bundle, or what was recorded) and a candidate bundle.

What replay does not decide again, because it depends on traffic history rather than on the
bundle: rate limits (each check gets fresh buckets, so none is ever exceeded), and what the
response side learned (bound sessions, tool pins: nothing is refused for them). A recorded
decision with one of those reasons (``HISTORY_REASONS``) is not compared with a bundle's.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy_service.decisions.model import DenialContext, Deny, DenyKind
from policy_service.decisions.render import http_status_of
from policy_service.errors import PolicyServiceError
from policy_service.identity.principal import CredentialKind, Principal
from policy_service.pipeline import CheckPipeline, GivenPrincipal, Identity
from policy_service.policy.model import UpstreamPolicy
from policy_service.request.model import HttpRequest
from policy_service.responses.guard import AnswerGuard, GuardRefusal
from policy_service.state import BundleState
from policy_service.telemetry.record import CheckRecord
from policy_service.telemetry.recording import SCHEMA
from policy_service.telemetry.tracing import decision_name

# Reasons that traffic history decided, not the bundle alone: rate limits and their store,
# the response side's sessions and pins, the audit sink, and our own faults.
HISTORY_REASONS = frozenset(
    {
        "rate_limited",
        "rate_limit_unavailable",
        "session_unknown",
        "session_principal_mismatch",
        "tool_not_pinned",
        "tool_definition_changed",
        "response_state_unavailable",
        "audit_unavailable",
        "internal_error",
    }
)
# A credential was sent, but the check was refused before it was verified: replay cannot
# verify it (the recording holds no credential), so it decides as for an unusable one.
NOT_REPLAYABLE_CREDENTIAL = "credential_not_recorded"


class RecordingError(PolicyServiceError):
    """A recording that cannot be read; the message names the line, never its content."""


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: str  # "allow", "deny" or "serve"
    reason: str
    rules: tuple[str, ...] = ()
    http_status: int | None = None

    def describe(self) -> str:
        text = f"{self.decision} ({self.reason}"
        if self.rules:
            text += f", rule {', '.join(self.rules)}"
        return text + ")"

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"decision": self.decision, "reason": self.reason}
        if self.rules:
            entry["rules"] = list(self.rules)
        if self.http_status is not None:
            entry["http_status"] = self.http_status
        return entry


@dataclass(frozen=True, slots=True)
class RecordedCheck:
    line: int
    decision_id: str
    request: HttpRequest
    identity: Identity
    recorded: Verdict
    upstream: str  # as recorded (else the route's tag, else the path), for the report
    caller: str  # subject/client_id, for the report
    call: str  # the first call's method and target, for the report
    incomplete: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Change:
    check: RecordedCheck
    before: Verdict
    after: Verdict

    @property
    def kind(self) -> str:
        if self.before.decision != self.after.decision:
            return f"{_allowish(self.before)}->{_allowish(self.after)}"
        return "reason_changed"

    def describe(self) -> str:
        check = self.check
        text = (
            f"  {check.decision_id}  {check.upstream}  {check.call}  {check.caller}: "
            f"{self.before.describe()} -> {self.after.describe()}"
        )
        if check.incomplete:
            text += f"  [recorded without: {', '.join(check.incomplete)}]"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "line": self.check.line,
            "decision_id": self.check.decision_id,
            "upstream": self.check.upstream,
            "call": self.check.call,
            "caller": self.check.caller,
            "change": self.kind,
            "before": self.before.as_json(),
            "after": self.after.as_json(),
            "incomplete": list(self.check.incomplete),
        }


@dataclass
class Diff:
    baseline: str  # a bundle's revision, or "recorded"
    candidate: str
    checks: int = 0
    not_compared: int = 0  # recorded decisions that traffic history decided
    changes: list[Change] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(change.kind for change in self.changes)

    def summary(self) -> str:
        counts = self.counts()
        parts = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
        text = (
            f"{self.checks} checks replayed ({self.baseline} -> {self.candidate}), "
            f"{len(self.changes)} changed" + (f": {parts}" if parts else "")
        )
        if self.not_compared:
            text += (
                f"; {self.not_compared} not compared (recorded decision depends on traffic "
                "history: rate limits, sessions, pins)"
            )
        return text

    def report(self) -> str:
        return "\n".join([self.summary(), *(change.describe() for change in self.changes)])

    def as_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "checks": self.checks,
            "changed": len(self.changes),
            "not_compared": self.not_compared,
            "counts": dict(sorted(self.counts().items())),
            "changes": [change.as_json() for change in self.changes],
        }


def _allowish(verdict: Verdict) -> str:
    return "deny" if verdict.decision == "deny" else "allow"


# --- reading ------------------------------------------------------------------------------


def read_recording(path: Path) -> list[RecordedCheck]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise RecordingError(f"{path}: {why}") from None
    return list(parse_recording(text.splitlines(), str(path)))


def parse_recording(lines: Iterable[str], name: str = "recording") -> Iterable[RecordedCheck]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            raise RecordingError(f"{name} line {number}: not a JSON object") from None
        if not isinstance(entry, dict) or entry.get("schema") != SCHEMA:
            raise RecordingError(f"{name} line {number}: not a {SCHEMA} line")
        try:
            yield recorded_check(entry, number)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise RecordingError(f"{name} line {number}: a field is missing or mistyped") from None


def recorded_check(entry: Mapping[str, Any], line: int = 0) -> RecordedCheck:
    request = entry["request"]
    body = request.get("body")
    http = HttpRequest(
        method=str(request["method"]),
        path=str(request["path"]),
        headers={str(k): str(v) for k, v in request.get("headers", {}).items()},
        repeated_headers=frozenset(request.get("repeated_headers", ())),
        body=b"" if body is None else json.dumps(body).encode(),
        body_truncated=bool(request.get("body_truncated", False)),
        context_extensions={
            str(k): str(v) for k, v in request.get("context_extensions", {}).items()
        },
    )
    decided = entry["decided"]
    recorded = Verdict(
        str(decided["decision"]),
        str(decided["reason"]),
        tuple(decided.get("rules", ())),
        decided.get("http_status"),
    )
    identity, caller = _identity(entry)
    return RecordedCheck(
        line,
        str(entry.get("decision_id", "")),
        http,
        identity,
        recorded,
        str(decided.get("upstream") or http.context_extensions.get("upstream") or http.path),
        caller,
        _call_of(body),
        tuple(entry.get("incomplete", ())),
    )


def _identity(entry: Mapping[str, Any]) -> tuple[Identity, str]:
    caller = entry.get("caller")
    if caller is not None:
        principal = Principal(
            str(caller["subject"]),
            str(caller["issuer"]),
            caller.get("client_id"),
            frozenset(caller.get("scopes", ())),
            CredentialKind(caller["credential"]),
            claims=dict(caller.get("claims", {})),
        )
        who = principal.subject + (f"/{principal.client_id}" if principal.client_id else "")
        return GivenPrincipal(principal), who
    failure = entry.get("credential_failure")
    if failure is not None:
        kind = DenyKind(failure["kind"])
        return RecordedRefusal(kind, str(failure["reason"]), str(failure["message"])), "-"
    if entry.get("credential", "none") == "none":
        return RecordedRefusal(
            DenyKind.MISSING_CREDENTIAL, "missing_credential", "authentication required"
        ), "-"
    return RecordedRefusal(
        DenyKind.INVALID_CREDENTIAL,
        NOT_REPLAYABLE_CREDENTIAL,
        "the recording holds no verified caller for this check",
    ), "-"


def _call_of(body: Any) -> str:
    first = body[0] if isinstance(body, list) and body else body
    if not isinstance(first, dict):
        return "-"
    method = str(first.get("method", "-"))
    params = first.get("params")
    target = params.get("name") or params.get("uri") if isinstance(params, dict) else None
    return f"{method} {target}" if target else method


@dataclass(frozen=True, slots=True)
class RecordedRefusal:
    """The identity phase as recorded for a check without a verified caller: it refuses as
    the service did (or as it would have, for a check refused before identity)."""

    kind: DenyKind
    reason: str
    message: str

    async def identify(
        self,
        state: BundleState,
        upstream: UpstreamPolicy,
        request: HttpRequest,
        context: DenialContext,
    ) -> Principal | Deny:
        return context.deny(self.kind, self.reason, self.message)


class _NoAnswerState(AnswerGuard):
    """Bound sessions and seen tool definitions are what the response side learned from
    traffic that replay does not have: replay refuses nothing for them."""

    async def refusal(self, *args: Any, **kwargs: Any) -> GuardRefusal | None:
        return None


_GUARD = _NoAnswerState()


# --- deciding -----------------------------------------------------------------------------


async def decide(state: BundleState, check: RecordedCheck) -> Verdict:
    """``check`` decided under ``state``'s bundle, with fresh buckets (no limit spends)."""
    pipeline = CheckPipeline(state, identity=check.identity, guard=_GUARD)
    record = CheckRecord(check.decision_id or "replay")
    decision = await pipeline.check(check.request, record)
    if isinstance(decision, Deny):
        rules = (decision.rule,) if decision.rule else ()
        return Verdict("deny", decision.reason, rules, http_status_of(decision))
    rules = getattr(decision, "rules", ())
    return Verdict(decision_name(decision), decision.reason, tuple(rules))


async def replay(
    checks: Sequence[RecordedCheck],
    candidate: BundleState,
    baseline: BundleState | None = None,
) -> Diff:
    """Each check decided under ``candidate`` and compared with ``baseline``'s decision, or
    without one, with what was recorded. A change is a new decision or a new reason."""
    diff = Diff(
        baseline.bundle.revision if baseline is not None else "recorded",
        candidate.bundle.revision,
    )
    for check in checks:
        diff.checks += 1
        if baseline is None:
            if check.recorded.reason in HISTORY_REASONS:
                diff.not_compared += 1
                continue
            before = check.recorded
        else:
            before = await decide(baseline, check)
        after = await decide(candidate, check)
        if (before.decision, before.reason) != (after.decision, after.reason):
            diff.changes.append(Change(check, before, after))
    return diff
