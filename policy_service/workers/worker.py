"""A worker's side of ``serve --workers N``: report to the supervisor, follow it out.

``SupervisorChannel`` says once whether the worker serves (with its /metrics port) or why it
could not start, then watches for the supervisor's end closing: a supervisor killed with
SIGKILL cannot forward a SIGTERM, and workers left behind would hold the port forever.

``refuse_in_process_limits`` wraps the bundle loader of N processes that keep rate-limit
buckets in process: each would count every limit alone, so N workers would let N times
each limit through. ``serve`` refuses such a start, and a reload that adds limits is
refused like any broken bundle (the last good one keeps serving; the reason is logged).

``warn_in_process_sessions`` is its milder sibling for session binding: each worker would
know only the sessions whose answers it saw, so a client's session is refused as unknown
(404) whenever its request reaches another worker. That fails closed (nobody reaches a
session that isn't theirs) but breaks clients, so it is logged loudly, not refused.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from policy_service.bundles.files import BundleFiles
from policy_service.bundles.reload import BundleLoad
from policy_service.errors import ConfigError
from policy_service.policy.model import CompiledBundle
from policy_service.server import PolicyServer
from policy_service.workers.protocol import WorkerSeat, failed_line, ready_line

log = logging.getLogger("policy_service.workers")


def in_process_limits_refusal(workers: int) -> str:
    return (
        f"--workers {workers} with rate limits kept in process would give every worker its "
        f"own buckets, multiplying each limit by {workers}; give --redis-url so the workers "
        "share their buckets in Redis"
    )


def refuse_in_process_limits(load: BundleLoad, workers: int) -> BundleLoad:
    """``load``, refusing any bundle with limits (``ConfigError``)."""

    def load_without_limits(files: BundleFiles) -> CompiledBundle:
        bundle = load(files)
        if bundle.limits:
            raise ConfigError(in_process_limits_refusal(workers))
        return bundle

    return load_without_limits


def in_process_sessions_warning(workers: int, upstreams: list[str]) -> str:
    return (
        f"--workers {workers} with sessions bound in process (upstreams {', '.join(upstreams)}): "
        "each worker knows only the sessions whose answers it saw, so clients whose requests "
        "reach another worker are refused with 404 session_unknown and must start over; give "
        "--redis-url so the workers share their session bindings"
    )


def warn_in_process_sessions(load: BundleLoad, workers: int, *, quiet_first: bool) -> BundleLoad:
    """``load``, warning about any bundle that binds sessions; ``quiet_first``: not for the
    first bundle (a worker's first load repeats what its supervisor already said)."""
    quiet = quiet_first

    def load_warning(files: BundleFiles) -> CompiledBundle:
        nonlocal quiet
        bundle = load(files)
        bound = [u.name for u in bundle.upstreams if u.responses.sessions.bind]
        if bound and not quiet:
            log.warning("%s", in_process_sessions_warning(workers, bound))
        quiet = False
        return bundle

    return load_warning


class SupervisorChannel:
    """The worker's end of the socket pair its supervisor handed down."""

    def __init__(self, seat: WorkerSeat) -> None:
        self.seat = seat
        self._socket = socket.socket(fileno=seat.channel_fd)
        self._reported = False

    def report_ready(self, metrics_port: int | None) -> None:
        self._report(ready_line(metrics_port))

    def report_failure(self, reason: str) -> None:
        """Why this worker cannot start; nothing once it has reported ready."""
        self._report(failed_line(reason))

    def _report(self, line: bytes) -> None:
        if self._reported:
            return
        self._reported = True
        try:
            self._socket.sendall(line)
        except OSError:
            log.warning("%s: the supervisor is not listening", self.seat.label)

    def on_serving(self, server: PolicyServer, stop: Callable[[], None]) -> None:
        """``server.serve_until_signalled``'s hook: report ready, then follow the
        supervisor out (``stop`` drains like SIGTERM)."""
        metrics = server.metrics_server
        self.report_ready(metrics.port if metrics is not None else None)
        self._stop_when_supervisor_gone(stop)

    def _stop_when_supervisor_gone(self, stop: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self._socket.setblocking(False)
        fd = self._socket.fileno()

        def readable() -> None:
            try:
                data = self._socket.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                return  # the supervisor sends nothing today; ignore whatever it is
            loop.remove_reader(fd)
            log.warning("the supervisor is gone; stopping")
            stop()

        loop.add_reader(fd, readable)
