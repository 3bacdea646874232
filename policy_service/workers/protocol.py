"""The supervisor-worker contract of ``serve --workers N``.

A worker is ``policy-service serve`` run again with the same arguments and three variables
that only the supervisor sets (none is a flag: ``--help`` has nothing to say about them):

    POLICY_SERVICE_WORKER             "2/4": this process is worker 2 of 4
    POLICY_SERVICE_WORKER_CHANNEL_FD  its end of a socket pair shared with the supervisor
    POLICY_SERVICE_AUDIT_LOCK_FD      a file to take a record lock on around long audit lines

On the channel the worker writes one line once: ``ready <metrics port or ->`` when it
serves, or ``failed <reason>`` when it cannot start. The supervisor never writes; the
channel reading end-of-file tells the worker that the supervisor is gone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from policy_service.errors import ConfigError

WORKER_ENV_VAR = "POLICY_SERVICE_WORKER"
CHANNEL_FD_ENV_VAR = "POLICY_SERVICE_WORKER_CHANNEL_FD"
AUDIT_LOCK_FD_ENV_VAR = "POLICY_SERVICE_AUDIT_LOCK_FD"

READY = "ready"
FAILED = "failed"
NO_PORT = "-"
MAX_REASON_CHARS = 500  # one log line's worth; the worker's own log has the rest

_SEAT = re.compile(r"([1-9][0-9]*)/([1-9][0-9]*)")


@dataclass(frozen=True)
class WorkerSeat:
    """Which worker this process is, and the descriptors its supervisor handed down."""

    index: int  # 1..count
    count: int
    channel_fd: int
    audit_lock_fd: int | None = None

    @property
    def label(self) -> str:
        return f"worker {self.index}/{self.count}"

    def environ(self) -> dict[str, str]:
        """The variables that start a process as this worker."""
        variables = {
            WORKER_ENV_VAR: f"{self.index}/{self.count}",
            CHANNEL_FD_ENV_VAR: str(self.channel_fd),
        }
        if self.audit_lock_fd is not None:
            variables[AUDIT_LOCK_FD_ENV_VAR] = str(self.audit_lock_fd)
        return variables

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSeat | None:
        """The seat a supervisor gave this process; None for a process started by hand."""
        seat = environ.get(WORKER_ENV_VAR)
        if seat is None:
            return None
        match = _SEAT.fullmatch(seat)
        channel = environ.get(CHANNEL_FD_ENV_VAR, "")
        lock = environ.get(AUDIT_LOCK_FD_ENV_VAR)
        if (
            match is None
            or int(match[1]) > int(match[2])
            or not channel.isdigit()
            or (lock is not None and not lock.isdigit())
        ):
            raise ConfigError(
                f"{WORKER_ENV_VAR} is set, but not as serve --workers sets it for its "
                "workers; unset it"
            )
        return cls(
            int(match[1]),
            int(match[2]),
            int(channel),
            int(lock) if lock is not None else None,
        )


def worker_label(environ: Mapping[str, str]) -> str | None:
    """``worker 2/4`` in a worker, for its log lines; None elsewhere (never raises)."""
    match = _SEAT.fullmatch(environ.get(WORKER_ENV_VAR, ""))
    return f"worker {match[1]}/{match[2]}" if match else None


@dataclass(frozen=True)
class Ready:
    metrics_port: int | None  # the worker's own /metrics on 127.0.0.1, if it has one


@dataclass(frozen=True)
class Failed:
    reason: str


def ready_line(metrics_port: int | None) -> bytes:
    port = NO_PORT if metrics_port is None else str(metrics_port)
    return f"{READY} {port}\n".encode()


def failed_line(reason: str) -> bytes:
    # One line: a reason with line breaks (a traceback) would end the report early.
    flat = " ".join(reason.split())[:MAX_REASON_CHARS]
    return f"{FAILED} {flat}\n".encode()


def parse_report(line: bytes) -> Ready | Failed:
    """What a worker's line says; an empty or garbled one (it died first) is a failure."""
    text = line.decode(errors="replace").strip()
    word, _, rest = text.partition(" ")
    if word == READY and (rest == NO_PORT or rest.isdigit()):
        return Ready(None if rest == NO_PORT else int(rest))
    if word == FAILED:
        return Failed(rest or "no reason given")
    if not text:
        return Failed("exited before it was ready")
    return Failed(f"unexpected report {text[:80]!r}")
