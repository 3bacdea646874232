"""Recordings: one replayable line per check (``serve --record``), holding no secret.

``policy-service replay`` decides a recording again under other bundles, so a line keeps
what the policy reads, in the form the service first saw it, minus every credential:

- the HTTP method, path, the route's context extensions, and only the headers in
  ``RECORDED_HEADERS`` (never Authorization, the API-key header, cookies or the identity
  headers; the MCP session id, a bearer capability, as a placeholder);
- the body as its JSON-RPC messages cut down to what the policy reads (method, id, the
  target's name or URI, the protocol version); tool and prompt arguments only where the
  bundle's ``audit.include_arguments`` allows, with the audit's redact keys applied;
- the caller as verified (subject, issuer name, client id, credential kind, scopes and
  claims, redact keys applied), never the token or key it was verified from;
- the decision and its reason.

Whatever replay cannot reproduce exactly is named in the line's ``incomplete`` list, so
a report can say why a decision on that line may differ. The line is built only when
recording is on, after the decision, and written through the audit's sink (one unbuffered
append, a line whole or absent, no wait on a stalled stream); a line that cannot be written
is counted and logged, and never changes the answer: a recording is a diagnostic, not a
trail.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from policy_service.decisions.model import Allow, Decision, Deny, DenyKind
from policy_service.decisions.render import http_status_of
from policy_service.identity.credentials import (
    AmbiguousCredential,
    UnusableCredential,
    extract_credential,
)
from policy_service.policy.model import AuditPolicy, CompiledBundle
from policy_service.request.jsonbody import parse_json
from policy_service.request.model import A2aRequest, HttpRequest, Malformed
from policy_service.telemetry.audit import AuditSink, json_line
from policy_service.telemetry.audit_event import redact, rfc3339
from policy_service.telemetry.record import CheckRecord
from policy_service.telemetry.tracing import decision_name

log = logging.getLogger("policy_service.recording")

SCHEMA = "policy_service.recording.v1"
# Everything a phase reads from the headers, besides credentials: the MCP transport's
# headers (version, mirrored method and name, session), Origin, A2A's version, and the
# content type that tells A2A's gRPC binding apart. An allow-list: a header not named here
# (a cookie, a custom key header, a proxy's token) never reaches a recording.
RECORDED_HEADERS = (
    "content-type",
    "accept",
    "origin",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "mcp-session-id",
    "a2a-version",
)
# Whoever holds a live session id may use the session, so a recording holds a stand-in:
# a session still reaches the policy as present, never as itself.
SESSION_HEADER = "mcp-session-id"
SESSION_PLACEHOLDER = "recorded-session"
# Of a JSON-RPC message's params, what the parsers and the policy read: the target's name
# or URI, completion's reference, and the protocol version (initialize's and ``_meta``'s).
_KEPT_PARAMS = ("name", "uri", "ref", "protocolVersion")
_ARGUMENTS = "arguments"
_META = "_meta"
_META_VERSION = "io.modelcontextprotocol/protocolVersion"
_IDENTITY_KINDS = frozenset(
    {DenyKind.MISSING_CREDENTIAL, DenyKind.INVALID_CREDENTIAL, DenyKind.INVALID_REQUEST}
)
_ERROR_LOG_INTERVAL_SECONDS = 10.0


class Recorder:
    """Writes recording lines for a sample of checks; never fails a check."""

    def __init__(
        self,
        sink: AuditSink,
        name: str,
        *,
        sample: float = 1.0,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.sink = sink
        self.name = name
        self.sample = sample
        self._chance = chance
        self.written = 0
        self.failed = 0
        self._last_error_log = -_ERROR_LOG_INTERVAL_SECONDS

    def record(self, request: HttpRequest, decision: Decision, record: CheckRecord) -> None:
        if self.sample < 1.0 and self._chance() >= self.sample:
            return
        line = json_line(recording_line(request, decision, record))
        try:
            self.sink.write(line)
        except OSError as exc:
            self.failed += 1
            now = time.monotonic()
            if now - self._last_error_log >= _ERROR_LOG_INTERVAL_SECONDS:
                self._last_error_log = now
                log.error(
                    "recording lines cannot be written to %s (%s); checks go on unrecorded "
                    "(%d lost so far)",
                    self.name,
                    exc.strerror or type(exc).__name__,
                    self.failed,
                )
            return
        self.written += 1

    def close(self) -> None:
        self.sink.close()


def recording_line(request: HttpRequest, decision: Decision, record: CheckRecord) -> dict[str, Any]:
    """The line for one check. Its ``incomplete`` list names what replay cannot reproduce:
    ``arguments`` (not recorded), ``redacted_arguments``, ``claims`` (some redacted),
    ``body`` (not JSON-RPC, or refused unread) and ``push_urls`` (A2A webhooks)."""
    bundle = record.bundle
    policy = bundle.audit if bundle is not None else AuditPolicy()
    incomplete: set[str] = set()
    line: dict[str, Any] = {
        "schema": SCHEMA,
        "time": rfc3339(time.time()),
        "decision_id": record.decision_id,
    }
    if bundle is not None:
        line["bundle_revision"] = bundle.revision
    line["request"] = _request(request, bundle, policy, incomplete)
    if isinstance(record.parsed, A2aRequest) and record.parsed.push_urls:
        # Webhook URLs can carry a capability of their own; a webhook rule is not replayed.
        incomplete.add("push_urls")
    caller = _caller(request, decision, record, policy, incomplete)
    line.update(caller)
    line["decided"] = _decided(decision, record)
    if incomplete:
        line["incomplete"] = sorted(incomplete)
    return line


def _request(
    request: HttpRequest,
    bundle: CompiledBundle | None,
    policy: AuditPolicy,
    incomplete: set[str],
) -> dict[str, Any]:
    entry: dict[str, Any] = {"method": request.method, "path": request.path}
    secret_headers = {"authorization", "cookie"}
    prefix = None
    if bundle is not None:
        secret_headers.add(bundle.api_key_header)
        prefix = bundle.identity_header_prefix
    headers: dict[str, str] = {}
    for name in RECORDED_HEADERS:
        value = request.headers.get(name)
        # A bundle may name any header for API keys or identities: never record those.
        if value is None or name in secret_headers or (prefix and name.startswith(prefix)):
            continue
        headers[name] = SESSION_PLACEHOLDER if name == SESSION_HEADER else value
    if headers:
        entry["headers"] = headers
    repeated = sorted(name for name in request.repeated_headers if name in headers)
    if repeated:
        entry["repeated_headers"] = repeated
    if request.context_extensions:
        entry["context_extensions"] = dict(request.context_extensions)
    if request.body_truncated:
        entry["body_truncated"] = True
    elif request.body.strip():
        body = _body(request, policy, incomplete)
        if body is not None:
            entry["body"] = body
    return entry


def _body(request: HttpRequest, policy: AuditPolicy, incomplete: set[str]) -> Any:
    """The body's JSON-RPC messages, cut to what the policy reads; None when it is not one
    (gRPC frames, invalid JSON): the body is then left out, and the line incomplete."""
    if request.headers.get("content-type", "").lower().startswith("application/grpc"):
        incomplete.add("body")
        return None
    doc = parse_json(request.body)
    if isinstance(doc, Malformed):
        incomplete.add("body")
        return None
    if isinstance(doc, list):
        return [_message(message, policy, incomplete) for message in doc]
    return _message(doc, policy, incomplete)


def _message(message: Any, policy: AuditPolicy, incomplete: set[str]) -> Any:
    if not isinstance(message, dict):
        # Any such body is refused as it is; its content (a string could be anything) is not
        # kept, and a stand-in of the same kind is refused the same way.
        incomplete.add("body")
        return None
    kept: dict[str, Any] = {
        key: message[key] for key in ("jsonrpc", "id", "method") if key in message
    }
    for key in ("result", "error"):
        if key in message:  # a response posted back: which one it carries, not its content
            kept[key] = None
    params = message.get("params")
    if isinstance(params, dict):
        kept["params"] = _params(params, policy, incomplete)
    elif params is not None:
        kept["params"] = [] if isinstance(params, list) else None
    return kept


def _params(params: Mapping[str, Any], policy: AuditPolicy, incomplete: set[str]) -> dict[str, Any]:
    kept = {key: params[key] for key in _KEPT_PARAMS if key in params}
    meta = params.get(_META)
    if isinstance(meta, dict) and _META_VERSION in meta:
        kept[_META] = {_META_VERSION: meta[_META_VERSION]}
    if _ARGUMENTS in params:
        arguments = params[_ARGUMENTS]
        if policy.include_arguments:
            shown = redact(arguments, policy.redact_keys)
            if shown != arguments:
                incomplete.add("redacted_arguments")
            kept[_ARGUMENTS] = shown
        elif arguments:
            # Left out as the audit leaves them out; replay sees {} where the call had some.
            incomplete.add("arguments")
            kept[_ARGUMENTS] = {}
        else:
            kept[_ARGUMENTS] = arguments
    return kept


def _caller(
    request: HttpRequest,
    decision: Decision,
    record: CheckRecord,
    policy: AuditPolicy,
    incomplete: set[str],
) -> dict[str, Any]:
    """``caller``: the verified principal; else ``credential_failure`` when the identity
    phase refused; else ``credential``: which kind of credential the request carried."""
    principal = record.principal
    if principal is not None:
        # Made once per principal and redact keys, and kept on it (the verified-token cache
        # holds the principal): a caller's next check reuses it.
        key = ("recording_caller", policy.redact_keys)
        made: tuple[dict[str, Any], bool] | None = principal.derived.get(key)
        if made is None:
            claims = redact(principal.claims, policy.redact_keys)
            caller: dict[str, Any] = {
                "subject": principal.subject,
                "issuer": principal.issuer,
                "credential": principal.credential.value,
                "scopes": sorted(principal.scopes),
                "claims": claims,
            }
            if principal.client_id:
                caller["client_id"] = principal.client_id
            made = principal.derived[key] = ({"caller": caller}, claims != principal.claims)
        if made[1]:
            incomplete.add("claims")
        return made[0]
    if isinstance(decision, Deny) and decision.kind in _IDENTITY_KINDS:
        # Reasons and messages of identity refusals never quote the credential.
        failure = {"kind": decision.kind.value, "reason": decision.reason}
        return {"credential_failure": failure | {"message": decision.message}}
    # Refused before the identity phase (or public): replay needs to know only whether a
    # credential was there, to decide as the service would had it gone further.
    api_key_header = record.bundle.api_key_header if record.bundle is not None else "x-api-key"
    credential = extract_credential(request, api_key_header)
    if credential is None:
        kind = "none"
    elif isinstance(credential, AmbiguousCredential | UnusableCredential):
        kind = "unusable"
    else:
        kind = credential.type.value
    return {"credential": kind}


def _decided(decision: Decision, record: CheckRecord) -> dict[str, Any]:
    decided: dict[str, Any] = {"decision": decision_name(decision), "reason": decision.reason}
    if record.upstream is not None:
        decided["upstream"] = record.upstream.name
    if isinstance(decision, Allow):
        if decision.rules:
            decided["rules"] = list(decision.rules)
    else:
        decided["http_status"] = http_status_of(decision)
        if isinstance(decision, Deny) and decision.rule:
            decided["rules"] = [decision.rule]
    return decided
