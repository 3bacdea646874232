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
``prompt``, ``method`` or ``a2a_method``. ``runner`` decides the cases.

The format is ``protos/policy_service/cases/v1/cases.proto``, and a file is checked as a
bundle is: first its shape, by the same descriptor walk (``bundles.shape``), then here what
the proto cannot say (required fields, one way to give a caller, the environment), and
against the bundle what only it knows (``check_case_targets``). Problems are reported all at
once, each with its path: every shape problem, and the meaning problems of every case whose
shape is right. Editors validate with the JSON Schema generated from the same proto
(``policy-service schema --cases``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

from google.protobuf.descriptor import Descriptor

from policy_service.bundles.loader import parse_yaml
from policy_service.bundles.problems import Problems
from policy_service.bundles.shape import check_shape
from policy_service.errors import BundleError, BundleProblem, CaseFileError
from policy_service.gen.policy_service.cases.v1 import cases_pb2
from policy_service.policy.model import CompiledBundle
from policy_service.request.model import UpstreamProtocol

# The generated module's descriptors are the C implementation; it is the same API.
_CASE_FILE = cast("Descriptor", cases_pb2.CaseFile.DESCRIPTOR)
_CALL = cast("Descriptor", cases_pb2.Call.DESCRIPTOR)

MCP_PROTOCOL_VERSION = "2025-11-25"
# What a call can be for: the proto's `target` oneof, in its order.
CALL_KINDS = tuple(kind.name for kind in _CALL.oneofs_by_name["target"].fields)
DECISIONS = ("allow", "deny")
MAX_REPEAT = 10_000
_CREDENTIAL_KEYS = ("api_key", "token", "token_env")
_CLAIM_KEYS = ("subject", "client_id", "issuer", "scopes", "claims")
_CASE_INDEX = re.compile(r"^cases\[(\d+)\]")

_SCHEMA_PACKAGE = "policy_service.gen.policy_service.cases.v1"
_SCHEMA_NAME = "cases.schema.json"


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
    decision: str  # one of DECISIONS
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


def cases_schema_text() -> str:
    """The case file's JSON Schema as shipped: pretty-printed JSON ending in a newline."""
    return resources.files(_SCHEMA_PACKAGE).joinpath(_SCHEMA_NAME).read_text(encoding="utf-8")


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
    """Check a parsed case file, shape then meaning, and read its cases."""
    if not isinstance(document, Mapping) or not isinstance(document.get("cases"), list):
        raise CaseFileError([BundleProblem(source, "", "expected a mapping with a 'cases' list")])
    shape = check_shape(document, _CASE_FILE, source)
    # A case whose shape is wrong is read for meaning once that is fixed: the checks below
    # may then trust every type, as the bundle compiler does after its shape pass.
    misshapen = {_case_index(problem.path) for problem in shape}
    problems = Problems(source)
    cases: list[Case] = []
    names: set[str] = set()
    for index, raw in enumerate(document["cases"]):
        if index not in misshapen:
            case = _case(raw, f"cases[{index}]", names, environ, problems)
            cases.extend([case] if case is not None else [])
    if not document["cases"]:
        problems.add("cases", "is empty: a test file needs at least one case")
    if shape or problems.items:
        # One list in file order: each case's problems together, whichever pass found them.
        raise CaseFileError(sorted([*shape, *problems.items], key=lambda p: _case_index(p.path)))
    return tuple(cases)


def _case_index(path: str) -> int:
    """Which case a problem is in; -1 for the file as a whole."""
    found = _CASE_INDEX.match(path)
    return int(found[1]) if found else -1


def _filled(raw: Mapping[str, Any], keys: Sequence[str], path: str, problems: Problems) -> bool:
    """Refuse empty strings where a case needs text. proto3 cannot tell "" from a missing
    key, so the shape pass lets it through; an empty target or key id would fail later,
    further from its cause."""
    empty = [key for key in keys if raw.get(key) == ""]
    for key in empty:
        problems.add(f"{path}.{key}", "must not be empty")
    return not empty


def _case(
    raw: Mapping[str, Any],
    path: str,
    names: set[str],
    environ: Mapping[str, str],
    problems: Problems,
) -> Case | None:
    before = len(problems)
    name = raw.get("name", "")
    if not name.strip():
        problems.add(f"{path}.name", "is required: say what the case shows")
    elif name in names:
        problems.add(f"{path}.name", f"duplicate case name '{name}'")
    names.add(name)
    caller = _caller(raw.get("caller"), f"{path}.caller", environ, problems)
    call = _call(raw.get("call"), f"{path}.call", problems)
    expect = _expectation(raw.get("expect"), f"{path}.expect", problems)
    repeat = raw.get("repeat", 1)
    if not 1 <= repeat <= MAX_REPEAT:
        problems.add(f"{path}.repeat", f"must be a whole number from 1 to {MAX_REPEAT}")
    if len(problems) > before or call is None or expect is None:
        return None
    return Case(name, caller, call, expect, repeat)


def _caller(
    raw: Mapping[str, Any] | None, path: str, environ: Mapping[str, str], problems: Problems
) -> Caller | None:
    if raw is None:
        return None  # anonymous: no credential at all
    ways = [key for key in _CREDENTIAL_KEYS if key in raw]
    if len(ways) > 1 or (ways and any(key in raw for key in _CLAIM_KEYS)):
        problems.add(path, "give claims (subject, scopes, ...), api_key or a token: one of them")
        return None
    if not _filled(raw, (*ways, "subject", "client_id", "issuer"), path, problems):
        return None
    if "api_key" in raw:
        return Caller(api_key=raw["api_key"])
    if "token" in raw:
        return Caller(token=raw["token"])
    if "token_env" in raw:
        variable = raw["token_env"]
        if not environ.get(variable):
            problems.add(f"{path}.token_env", f"environment variable '{variable}' is not set")
            return None
        return Caller(token=environ[variable])
    claims = raw.get("claims", {})
    subject = raw.get("subject") or (
        claims.get("sub") if isinstance(claims.get("sub"), str) else None
    )
    return Caller(
        subject=subject or "test-subject",
        client_id=raw.get("client_id"),
        issuer=raw.get("issuer"),
        scopes=tuple(raw.get("scopes", ())),
        claims=dict(claims),
    )


def _call(raw: Mapping[str, Any] | None, path: str, problems: Problems) -> Call | None:
    if raw is None:
        problems.add(path, "is required: a mapping with upstream and what is called")
        return None
    upstream = raw.get("upstream")
    if upstream is None:
        problems.add(f"{path}.upstream", "is required")
    kinds = [kind for kind in CALL_KINDS if kind in raw]  # the shape pass allows at most one
    if not kinds:
        problems.add(path, f"name exactly one of: {', '.join(CALL_KINDS)}")
        return None
    kind = kinds[0]
    if not _filled(raw, ("upstream", kind, "protocol_version"), path, problems) or not upstream:
        return None
    return Call(
        upstream,
        kind,
        raw[kind],
        raw.get("arguments"),
        {name.lower(): value for name, value in raw.get("headers", {}).items()},
        raw.get("protocol_version", MCP_PROTOCOL_VERSION),
    )


def _expectation(
    raw: Mapping[str, Any] | None, path: str, problems: Problems
) -> Expectation | None:
    if raw is None:
        problems.add(path, "is required: a mapping with at least the decision")
        return None
    decision = raw.get("decision")
    if decision not in DECISIONS:
        problems.add(f"{path}.decision", "must be 'allow' or 'deny'")
        return None
    status = raw.get("status")
    if status is not None and not 100 <= status <= 599:
        problems.add(f"{path}.status", "must be an HTTP status code")
    if not _filled(raw, ("reason", "rule"), path, problems):
        return None
    missing_scopes = raw.get("missing_scopes")
    dry_run = raw.get("dry_run")
    return Expectation(
        decision=decision,
        reason=raw.get("reason"),
        rule=raw.get("rule"),
        missing_scopes=None if missing_scopes is None else tuple(missing_scopes),
        status=status,
        dry_run=None if dry_run is None else tuple(dict(item) for item in dry_run),
    )


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
