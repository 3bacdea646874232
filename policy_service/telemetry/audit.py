"""Audit lines: writing one JSON line per decision (``audit_event`` builds them).

Security teams prove who called what from these lines, so writing one is part of the
decision: the service writes the event before it answers Envoy, and when the sink cannot
write, the configured failure mode decides (closed: the call is refused with 503; open:
it goes through, the failure is counted and logged). Never silently. A denial goes out
either way, unaudited and counted. A sink that cannot take an event at once (a stalled
reader, a lock another worker holds) fails like a full disk: no check waits on the audit
stream for more than a few milliseconds, and a line on it is whole or absent.

Events are serialized with orjson, a line per event, written unbuffered.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import select
import stat
import time
from collections import Counter
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import orjson

# The events themselves are built in audit_event; their names stay importable from here.
from policy_service.telemetry.audit_event import (
    MAX_ARGUMENT_STRING,
    REDACTED,
    SCHEMA,
    audit_event,
    redact,
)

log = logging.getLogger("policy_service.audit")

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
        line = json_line(event)
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


def json_line(event: Mapping[str, Any]) -> bytes:
    """The event as one compact UTF-8 JSON line. orjson takes it in well under a
    microsecond (the standard library took nine), in the same bytes."""
    try:
        return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # An integer past 64 bits (JSON allows them in audited tool arguments).
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


__all__ = [
    "MAX_ARGUMENT_STRING",
    "REDACTED",
    "SCHEMA",
    "TORN_LINE_END",
    "AuditFailureMode",
    "AuditSink",
    "Auditor",
    "FileSink",
    "SharedFileSink",
    "audit_event",
    "json_line",
    "redact",
]
