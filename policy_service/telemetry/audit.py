"""Audit events: one JSON line per decision, in the schema of protos/.../audit/v1/audit.proto.

Security teams prove who called what from these lines, so writing one is part of the
decision: the service writes the event before it answers Envoy, and when the sink cannot
write, the configured failure mode decides (closed: the call is refused with 503; open:
it goes through, the failure is counted and logged). Never silently. A denial goes out
either way, unaudited and counted. A sink that cannot take an event at once (a stalled
reader, a lock another worker holds) fails like a full disk: no check waits on the audit
stream for more than a few milliseconds, and a line on it is whole or absent.

Events are plain dicts serialized with ``json`` (a test parses every kind of event into
the proto, so the two cannot drift); building the proto per check would cost more than
the rest of the event.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import math
import os
import select
import stat
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import orjson

from policy_service.decisions.model import Allow, Decision, Deny
from policy_service.decisions.render import http_status_of
from policy_service.identity.principal import Principal
from policy_service.policy.model import AuditPolicy
from policy_service.ratelimits.limiter import RateLimitResult
from policy_service.request.model import A2aRequest, HttpRequest, JsonRpcCall, McpRequest
from policy_service.telemetry.facts import CheckFacts
from policy_service.telemetry.record import CheckRecord, DryRunRecord
from policy_service.telemetry.tracing import decision_name

log = logging.getLogger("policy_service.audit")

SCHEMA = "policy_service.audit.v1"
REDACTED = "[redacted]"
MAX_ARGUMENT_STRING = 1024  # longer argument strings are cut: events stay small
_ERROR_LOG_INTERVAL_SECONDS = 10.0
# A write never holds up the event loop (and every check on it) for longer than these:
# a stream that was taking lines gets this long to take the next one (a reader that is
# slow for a moment is not a failing sink), one that failed the last line gets no wait;
_WRITE_PATIENCE_SECONDS = 0.003
_LOCK_WAIT_SECONDS = 0.005  # and the record lock of `serve --workers`, held only briefly
_LOCK_RETRY_SECONDS = 0.0002
# Ends a fragment a failed write left on a stream that cannot be truncated: a space and a
# word that no JSON text continues, so the fragment can never parse as an event.
TORN_LINE_END = b" [torn]\n"
_TORN_FLAG, _WHOLE_FLAG = b"T", b"W"
_CALLER = "audit_caller"  # Principal.derived key


class AuditFailureMode(StrEnum):
    CLOSED = "closed"  # an event that cannot be written refuses the call (503)
    OPEN = "open"  # the call goes through; the failure is counted and logged


class AuditSink(Protocol):
    """Where event lines go. ``write`` raises ``OSError`` when it cannot, and then leaves
    no part of the line behind that a later line could be glued onto."""

    def write(self, line: bytes) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """Appends to a file (or writes to a file descriptor such as stdout).

    One ``os.write`` per event, unbuffered: a crash loses no event that was acknowledged,
    and with O_APPEND several processes can share one file without tearing lines.

    A line is whole or absent, and a write never waits for long:

    - A pipe, FIFO or socket is made non-blocking (on its open file description, which
      others holding it share), so a reader that stalls makes the write fail with EAGAIN
      instead of freezing the event loop and every check with it. A line gets
      ``_WRITE_PATIENCE_SECONDS`` to go out while the stream has been taking lines, and
      none once it failed one: a stalled reader costs each check one write, no wait.
    - A line that lands only in part (a full disk, a file size limit, a stalled reader)
      is undone on a regular file: the file is truncated back to where the line began,
      if nothing was written after it. Where it cannot be undone (a pipe), the stream is
      *torn*: before the next line it is ended with ``TORN_LINE_END``, which no JSON
      text continues, so the fragment reads as one unparseable line, never as an event
      (not even when all but the newline went out), and the next line starts whole.
      While the ending cannot be written either, every new line fails.

    Terminals and other character devices are left as they are (a terminal is an
    interactive stream someone else's shell shares); regular files never return EAGAIN.
    """

    def __init__(self, fd: int, name: str, *, owned: bool) -> None:
        self._fd = fd
        self.name = name
        self._owned = owned
        mode = os.fstat(fd).st_mode
        self._regular = stat.S_ISREG(mode)
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            os.set_blocking(fd, False)
        self._torn = False
        self._failing = False  # the last line failed: do not wait for the stream

    @classmethod
    def open(cls, path: Path) -> FileSink:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return cls(fd, str(path), owned=True)

    @classmethod
    def stdout(cls) -> FileSink:
        return cls(1, "stdout", owned=False)

    def write(self, line: bytes) -> None:
        deadline = time.monotonic() + (0.0 if self._failing else _WRITE_PATIENCE_SECONDS)
        self._failing = True
        if self._is_torn():
            # Nothing follows a fragment but its ending: this raises (the new line fails)
            # until the stream takes it. Short enough to go whole or not at all on a pipe.
            self._write_line(TORN_LINE_END, deadline)
            self._set_torn(False)
        self._write_line(line, deadline)
        self._failing = False

    def _write_line(self, line: bytes, deadline: float) -> None:
        view = memoryview(line)
        try:
            while view:
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not _wait_writable(self._fd, left):
                        raise
                    continue
                view = view[written:]
        except OSError:
            if len(view) < len(line):
                self._cut(len(line) - len(view))
            raise

    def _cut(self, written: int) -> None:
        """The stream ends with the first ``written`` bytes of a line that failed."""
        if not (self._regular and self._truncate(written)):
            self._set_torn(True)

    def _truncate(self, written: int) -> bool:
        try:
            end = os.lseek(self._fd, 0, os.SEEK_CUR)  # after our bytes, O_APPEND or not
            if os.fstat(self._fd).st_size != end:
                return False  # another writer's bytes follow ours: not ours to cut
            os.ftruncate(self._fd, end - written)
            os.lseek(self._fd, end - written, os.SEEK_SET)
        except OSError:
            return False
        return True

    def _is_torn(self) -> bool:
        return self._torn

    def _set_torn(self, torn: bool) -> None:
        self._torn = torn

    def close(self) -> None:
        try:
            if self._is_torn():  # the stream ends whole, if it will take the ending now
                self._write_line(TORN_LINE_END, time.monotonic() + _WRITE_PATIENCE_SECONDS)
                self._set_torn(False)
        except OSError:
            pass
        if self._owned:
            os.close(self._fd)

    def shared(self, lock_fd: int) -> SharedFileSink:
        """This sink for one of several processes writing the same stream (``serve
        --workers``), serializing what could interleave with a record lock on ``lock_fd``."""
        return SharedFileSink(self._fd, self.name, owned=self._owned, lock_fd=lock_fd)


class SharedFileSink(FileSink):
    """A ``FileSink`` whose lines never interleave with other processes' lines.

    The kernel writes a line whole in two cases: a write of at most PIPE_BUF bytes to a pipe,
    and any write to a regular file opened O_APPEND. Longer lines (events with audited tool
    arguments) may go out in pieces, between which another process's write can land, so
    they are written holding a POSIX record lock that every worker takes on the same file.
    On anything but a regular file (stdout as a pipe, a terminal or a socket) a short line
    could still land between the pieces of another worker's long one, so every line takes
    the lock there. A single process (``--workers 1``) uses ``FileSink``: no lock at all.

    The lock is never waited on in the kernel: it is tried, and tried again for up to
    ``_LOCK_WAIT_SECONDS``, and then the event fails (the failure mode decides), as for a
    sink that cannot take it. Whoever holds it writes for at most
    ``_WRITE_PATIENCE_SECONDS`` (the stream is non-blocking), so it is held briefly.
    Where every line takes the lock, whether the stream is torn is kept in the lock file
    (its first byte), so whichever worker writes next ends another worker's fragment.
    A line cut on a regular file is truncated away holding the lock; a short line written
    without the lock by another worker in the instant between the cut and the truncation
    would be glued to the fragment (the file is then ended with ``TORN_LINE_END`` instead).
    """

    def __init__(self, fd: int, name: str, *, owned: bool, lock_fd: int) -> None:
        super().__init__(fd, name, owned=owned)
        self._lock_fd = lock_fd
        self._whole_up_to = select.PIPE_BUF if self._regular else 0
        self._locked = False

    def write(self, line: bytes) -> None:
        if len(line) <= self._whole_up_to and not self._torn:
            super().write(line)
            return
        # Raises OSError like the write itself: the failure mode decides, as for any sink.
        self._lock()
        try:
            super().write(line)
        finally:
            self._unlock()

    def _lock(self) -> None:
        deadline = time.monotonic() + _LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise BlockingIOError(
                        errno.EAGAIN, "another worker holds the audit lock"
                    ) from None
                time.sleep(_LOCK_RETRY_SECONDS)
            else:
                self._locked = True
                return

    def _unlock(self) -> None:
        self._locked = False
        fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)

    def _cut(self, written: int) -> None:
        if self._locked or not self._regular:
            super()._cut(written)
            return
        try:
            self._lock()
        except OSError:
            self._set_torn(True)
            return
        try:
            super()._cut(written)
        finally:
            self._unlock()

    def _is_torn(self) -> bool:
        if self._whole_up_to:
            return self._torn
        return os.pread(self._lock_fd, 1, 0) == _TORN_FLAG

    def _set_torn(self, torn: bool) -> None:
        self._torn = torn
        if not self._whole_up_to:
            os.pwrite(self._lock_fd, _TORN_FLAG if torn else _WHOLE_FLAG, 0)


def _wait_writable(fd: int, seconds: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(max(1, math.ceil(seconds * 1000))))


class Auditor:
    """Writes events and applies the failure mode; counts what it wrote and what it lost.

    While the sink fails, every event is lost, denials' too: a denial goes out as decided,
    unaudited (refusing it again would tell the client less), and counts as failed like
    any other. One line says the sink fails (at most one per ``_ERROR_LOG_INTERVAL_SECONDS``)
    and one says it writes again (as rarely), with how many events were lost meanwhile and
    of which decisions.
    """

    def __init__(self, sink: AuditSink | None, failure_mode: AuditFailureMode) -> None:
        self.sink = sink
        self.failure_mode = failure_mode
        self.written = 0
        self.failed = 0
        self._last_error_log = -_ERROR_LOG_INTERVAL_SECONDS
        self._lost: Counter[str] = Counter()  # since writes last worked, by decision
        self._failing_since = 0.0
        self._last_recovery_log = -_ERROR_LOG_INTERVAL_SECONDS

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def write(self, event: Mapping[str, Any]) -> bool:
        """Write one event; False when it could not be written."""
        if self.sink is None:
            return True
        line = _json_line(event)
        try:
            self.sink.write(line)
        except OSError as exc:
            self.failed += 1
            if not self._lost:
                self._failing_since = time.monotonic()
            self._lost[str(event.get("decision", "deny"))] += 1
            self._log_failure(exc)
            return False
        self.written += 1
        if self._lost:
            self._log_recovery()
        return True

    def _sink_name(self) -> str:
        return self.sink.name if isinstance(self.sink, FileSink) else "the audit sink"

    def _log_failure(self, exc: OSError) -> None:
        # One line per interval, not one per check: a full disk must not also flood logs.
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL_SECONDS:
            self._last_error_log = now
            consequence = (
                "allowed calls are refused with 503 audit_unavailable"
                if self.failure_mode is AuditFailureMode.CLOSED
                else "allowed calls go through unaudited"
            )
            log.error(
                "audit events cannot be written to %s (%s); %s, denials go out unaudited "
                "(%d lost so far)",
                self._sink_name(),
                exc.strerror or type(exc).__name__,
                consequence,
                self.failed,
            )

    def _log_recovery(self) -> None:
        # As rate-limited as failures: a sink that flaps must not log two lines per check.
        # Losses not yet told are told by the next success after the interval.
        now = time.monotonic()
        if now - self._last_recovery_log < _ERROR_LOG_INTERVAL_SECONDS:
            return
        self._last_recovery_log = now
        lost = self._lost
        allowed = lost["allow"]
        fate = "refused with 503" if self.failure_mode is AuditFailureMode.CLOSED else "let through"
        log.warning(
            "audit events are written to %s again after %.1f s; %d events were lost meanwhile "
            "(%d allowed calls %s, %d denials and %d served answers sent unaudited)",
            self._sink_name(),
            now - self._failing_since,
            sum(lost.values()),
            allowed,
            fate,
            lost["deny"],
            lost["serve"],
        )
        lost.clear()

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


def _json_line(event: Mapping[str, Any]) -> bytes:
    """The event as one compact UTF-8 JSON line. orjson takes it in well under a
    microsecond (the standard library took nine), in the same bytes."""
    try:
        return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # An integer past 64 bits (JSON allows them in audited tool arguments).
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def audit_event(
    request: HttpRequest,
    decision: Decision,
    record: CheckRecord,
    facts: CheckFacts,
    *,
    latency_seconds: float,
    trace_id: str,
    span_id: str,
) -> dict[str, Any]:
    """The event for one decision. Fields that do not apply are left out."""
    event: dict[str, Any] = {
        "schema": SCHEMA,
        "time": _rfc3339(time.time()),
        "decision_id": record.decision_id,
        "decision": decision_name(decision),
        "reason": decision.reason,
        "latency_ms": round(latency_seconds * 1000, 3),
    }
    if trace_id:
        event["trace_id"] = trace_id
    if span_id:
        event["span_id"] = span_id
    if request.request_id:
        event["request_id"] = request.request_id
    if record.bundle is not None:
        event["bundle_revision"] = record.bundle.revision
    if isinstance(decision, Allow):
        if decision.rules:
            event["rules"] = list(decision.rules)
    else:
        event["http_status"] = http_status_of(decision)
    if isinstance(decision, Deny):
        event["message"] = decision.message
        if decision.rule:
            event["rules"] = [decision.rule]
        if decision.missing_scopes:
            event["missing_scopes"] = list(decision.missing_scopes)

    caller = _caller(request, record)
    if caller:
        event["caller"] = caller
    policy = record.bundle.audit if record.bundle is not None else AuditPolicy()
    event["target"] = _target(request, record, facts, policy)
    if record.limits is not None:
        event["rate_limit"] = _rate_limit(record.limits)
    if record.dry_runs:
        event["dry_run"] = [_dry_run(dry_run) for dry_run in record.dry_runs]
    return event


def _dry_run(dry_run: DryRunRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "source": dry_run.source,
        "name": dry_run.name,
        "decision": dry_run.decision,
        "reason": dry_run.reason,
        "agrees": dry_run.agrees,
    }
    if dry_run.missing_scopes:
        entry["missing_scopes"] = list(dry_run.missing_scopes)
    return entry


def _caller(request: HttpRequest, record: CheckRecord) -> dict[str, Any]:
    principal = record.principal
    caller: dict[str, Any] = {} if principal is None else dict(_principal_fields(principal))
    if request.peer_address:
        caller["peer_address"] = request.peer_address
    if request.peer_principal:
        caller["peer_principal"] = request.peer_principal
    return caller


def _principal_fields(principal: Principal) -> dict[str, Any]:
    """Who the principal is, as events say it: made once per principal and kept on it (the
    verified-token cache holds the principal). Callers copy it before adding to it."""
    fields: dict[str, Any] | None = principal.derived.get(_CALLER)
    if fields is None:
        fields = {"subject": principal.subject, "issuer": principal.issuer}
        if principal.client_id:
            fields["client_id"] = principal.client_id
        fields["credential"] = principal.credential.value
        fields["scopes"] = sorted(principal.scopes)
        principal.derived[_CALLER] = fields
    return fields


def _target(
    request: HttpRequest, record: CheckRecord, facts: CheckFacts, policy: AuditPolicy
) -> dict[str, Any]:
    target: dict[str, Any] = {"http_method": request.method, "path": request.path}
    if facts.upstream is not None:
        target["upstream"] = facts.upstream
        target["protocol"] = facts.protocol
    elif facts.route_tag is not None:
        target["upstream"] = facts.route_tag
    parsed = record.parsed
    if isinstance(parsed, McpRequest):
        calls = [_call(call, policy) for call in parsed.calls if call.method is not None]
        if calls:
            target["calls"] = calls
        if facts.mcp_session_id:
            target["mcp_session_id"] = facts.mcp_session_id
        target["mcp_protocol_version"] = facts.mcp_protocol_version
    elif isinstance(parsed, A2aRequest):
        call: dict[str, Any] = {"kind": "a2a_method", "method": parsed.method}
        call["name"] = parsed.method
        if parsed.request_id is not None:
            call["jsonrpc_id"] = str(parsed.request_id)
        target["calls"] = [call]
    return target


def _call(call: JsonRpcCall, policy: AuditPolicy) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": call.kind.value, "method": call.method}
    entry["name"] = call.name if call.name is not None else call.method
    if call.request_id is not None:
        entry["jsonrpc_id"] = str(call.request_id)
    if policy.include_arguments and call.arguments is not None:
        entry["arguments"] = redact(call.arguments, policy.redact_keys)
    return entry


def redact(value: Any, keys: frozenset[str]) -> Any:
    """A copy of ``value`` with sensitive keys' values replaced and long strings cut."""
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if str(key).lower() in keys else redact(item, keys)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item, keys) for item in value]
    if isinstance(value, str) and len(value) > MAX_ARGUMENT_STRING:
        return value[:MAX_ARGUMENT_STRING] + "…"
    return value


def _rate_limit(result: RateLimitResult) -> dict[str, Any]:
    outcome: dict[str, Any] = {"verdict": result.verdict.value}
    if result.store_error:
        outcome["store_error"] = result.store_error
    if result.states:
        outcome["limits"] = [
            {
                "name": state.limit.name,
                "scope": state.limit.scope,
                "remaining": state.remaining,
                "limit": state.limit.rate.count,
                "window_seconds": state.limit.rate.window_seconds,
                "retry_after_ms": state.retry_after_ms,
                "shadow": state.limit.shadow,
            }
            for state in result.states
        ]
    return outcome


def _rfc3339(epoch_seconds: float) -> str:
    """``2026-12-04T21:33:50.123456Z``. Every event needs one, and many share a second: the
    date and time part is formatted once per second, only the microseconds per event."""
    # Rounded as datetime.fromtimestamp rounds, so the text is the same as it formats.
    fraction, whole = math.modf(epoch_seconds)
    micros = round(fraction * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second_text(int(whole))}.{micros:06d}Z"


@functools.lru_cache(maxsize=4)
def _second_text(whole_seconds: int) -> str:
    return datetime.fromtimestamp(whole_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
