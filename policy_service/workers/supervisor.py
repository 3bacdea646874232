"""The supervisor of ``serve --workers N``: start N workers, keep them running, stop them.

It runs only after ``serve`` has checked everything a worker would (the bundle loads, the
flags agree, the address can be shared), then:

* starts the N workers at once, each with its seat (``protocol``), and waits until each
  reports ready; a worker that cannot start stops the others, and the supervisor fails
  with that worker's reason;
* restarts a worker that dies, after a backoff (``backoff``), logging why it died;
* forwards SIGTERM and SIGINT as SIGTERM (each worker drains within ``--grace``; one still
  running ``STOP_MARGIN_SECONDS`` later is killed) and SIGHUP as SIGHUP (a worker still
  starting gets it once it serves: it may have read the bundle before the change);
* serves the one /metrics (``scrape``) when ``--metrics-listen`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import IO, TypeVar

from policy_service.errors import ConfigError, PolicyServiceError
from policy_service.telemetry.metrics import MetricsServer
from policy_service.workers.backoff import RestartBackoff
from policy_service.workers.protocol import Failed, Ready, WorkerSeat, parse_report
from policy_service.workers.scrape import WorkerMetrics, WorkerState, supervisor_registry

log = logging.getLogger("policy_service.workers")

# Past --grace: a worker closing its trail (flushing spans) after the drain gets this long.
STOP_MARGIN_SECONDS = 5.0

T = TypeVar("T")


class WorkerStartError(PolicyServiceError):
    """A worker could not start the first time; the others were stopped."""


@dataclass(frozen=True)
class WorkerPlan:
    command: tuple[str, ...]  # one worker's command line: this serve, run again
    count: int
    grace_seconds: float
    metrics_listen: tuple[str, int] | None = None  # the merged /metrics
    share_audit: bool = True  # hand the workers a lock for long audit lines
    backoff: RestartBackoff = field(default_factory=RestartBackoff)


class _Slot:
    """One of the N seats, and the process in it now."""

    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.name = f"worker {index}/{count}"
        self.process: asyncio.subprocess.Process | None = None
        self.channel: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None
        self.serving = False
        self.metrics_port: int | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.delay: float | None = None  # the backoff before the current process started
        self.reload_pending = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def state(self) -> WorkerState:
        return WorkerState(
            str(self.index), self.pid, self.serving, self.metrics_port, self.restarts
        )


def describe_exit(returncode: int) -> str:
    """``code 1``, ``signal 9 (SIGKILL)``: how a worker ended, for a log line."""
    if returncode >= 0:
        return f"code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    return f"signal {-returncode} ({name})"


class Supervisor:
    def __init__(self, plan: WorkerPlan, environ: Mapping[str, str] | None = None) -> None:
        self._plan = plan
        self._environ = dict(os.environ if environ is None else environ)
        self._slots = [_Slot(index, plan.count) for index in range(1, plan.count + 1)]
        self._stop = asyncio.Event()
        self._audit_lock: IO[bytes] | None = None

    def states(self) -> list[WorkerState]:
        return [slot.state() for slot in self._slots]

    async def run(self) -> None:
        """Until SIGTERM or SIGINT; raises ``WorkerStartError`` if a first start fails."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._request_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._forward_reload)
        with contextlib.ExitStack() as cleanup:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                cleanup.callback(loop.remove_signal_handler, signum)
            metrics = WorkerMetrics(self.states)
            cleanup.callback(metrics.close)
            server = self._serve_metrics(metrics)  # first: a taken port fails before workers
            if server is not None:
                cleanup.callback(server.close)
            if self._plan.share_audit:
                # Unlinked at once: nothing is left behind, whatever ends this process.
                self._audit_lock = cleanup.enter_context(
                    tempfile.TemporaryFile(prefix="policy-service-audit-lock-")
                )
            try:
                await self._start_all()
                if not self._stop.is_set():
                    log.info("%d workers serving", self._plan.count)
                    await asyncio.gather(*(self._keep_running(slot) for slot in self._slots))
            finally:
                await self._stop_all()

    def _serve_metrics(self, metrics: WorkerMetrics) -> MetricsServer | None:
        if self._plan.metrics_listen is None:
            return None
        host, port = self._plan.metrics_listen
        try:
            server = MetricsServer(supervisor_registry(metrics), host, port)
        except OSError as exc:
            raise ConfigError(f"--metrics-listen {host}:{port}: {exc.strerror or exc}") from None
        log.info("metrics of all workers on http://%s:%d/metrics", host, server.port)
        return server

    # -- signals ---------------------------------------------------------------------------

    def _request_stop(self, signum: int) -> None:
        if self._stop.is_set():
            return
        log.info(
            "%s received; stopping the workers (each drains for up to %gs)",
            signal.Signals(signum).name,
            self._plan.grace_seconds,
        )
        self._stop.set()

    def _forward_reload(self) -> None:
        log.info("SIGHUP received; asking every worker to reload its bundle")
        for slot in self._slots:
            if slot.serving and slot.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGHUP)
            else:
                slot.reload_pending = True  # sent once it serves

    # -- starting --------------------------------------------------------------------------

    async def _start_all(self) -> None:
        starting = {asyncio.create_task(self._start(slot)): slot for slot in self._slots}
        pending = set(starting)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    report = task.result()
                    if isinstance(report, Failed):
                        slot = starting[task]
                        log.error(
                            "%s could not start: %s; stopping the others", slot.name, report.reason
                        )
                        await self._let_exit(slot)
                        raise WorkerStartError(f"{slot.name} could not start: {report.reason}")
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _let_exit(self, slot: _Slot) -> None:
        """Give a worker that failed time to finish its own log (a traceback) and exit."""
        if slot.process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.process.wait(), STOP_MARGIN_SECONDS)

    async def _start(self, slot: _Slot) -> Ready | Failed | None:
        """Start a process in ``slot`` and wait for its report (None: a stop came first)."""
        try:
            await self._spawn(slot)
        except OSError as exc:
            slot.process = None
            return Failed(f"cannot run {self._plan.command[0]}: {exc.strerror or exc}")
        assert slot.reader is not None
        assert slot.process is not None
        line = await self._unless_stopped(slot.reader.readline())
        if line is None:
            return None
        if not line:
            # It died before saying anything (a crash at import, a signal): say how.
            code = await self._unless_stopped(slot.process.wait())
            if code is None:
                return None
            return Failed(f"exited with {describe_exit(code)} before it was ready")
        report = parse_report(line)
        if isinstance(report, Ready):
            slot.serving = True
            slot.metrics_port = report.metrics_port
            log.info("%s pid %s serving", slot.name, slot.pid)
            if slot.reload_pending and slot.process is not None:
                slot.reload_pending = False
                slot.process.send_signal(signal.SIGHUP)
        return report

    async def _spawn(self, slot: _Slot) -> None:
        self._close_channel(slot)
        ours, theirs = socket.socketpair()
        try:
            lock_fd = self._audit_lock.fileno() if self._audit_lock is not None else None
            seat = WorkerSeat(slot.index, self._plan.count, theirs.fileno(), lock_fd)
            inherited = [theirs.fileno()] + ([lock_fd] if lock_fd is not None else [])
            slot.process = await asyncio.create_subprocess_exec(
                *self._plan.command,
                stdin=subprocess.DEVNULL,
                env={**self._environ, **seat.environ()},
                pass_fds=inherited,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the worker holds it now: its exit reads here as end-of-file
        slot.started_at = asyncio.get_running_loop().time()
        slot.serving = False
        slot.metrics_port = None
        slot.reader, slot.channel = await asyncio.open_unix_connection(sock=ours)

    # -- running ---------------------------------------------------------------------------

    async def _keep_running(self, slot: _Slot) -> None:
        """Restart the slot's worker whenever it dies, until a stop is asked."""
        loop = asyncio.get_running_loop()
        while True:
            process = slot.process
            if process is not None and await self._unless_stopped(process.wait()) is None:
                return
            slot.serving = False
            slot.metrics_port = None
            uptime = loop.time() - slot.started_at
            slot.delay = self._plan.backoff.next_delay(slot.delay, uptime)
            slot.restarts += 1
            if process is None or process.returncode is None:
                log.error("%s has no process; starting one in %gs", slot.name, slot.delay)
            else:
                log.warning(
                    "%s (pid %s) exited with %s; restarting in %gs",
                    slot.name,
                    process.pid,
                    describe_exit(process.returncode),
                    slot.delay,
                )
            if await self._unless_stopped(asyncio.sleep(slot.delay, result=True)) is None:
                return
            report = await self._start(slot)
            if report is None:
                return
            if isinstance(report, Failed):
                log.error("%s (pid %s) could not start: %s", slot.name, slot.pid, report.reason)

    async def _unless_stopped(self, work: Awaitable[T]) -> T | None:
        """``work``'s result, or None when a stop is asked first (``work`` is cancelled)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None

    # -- stopping --------------------------------------------------------------------------

    async def _stop_all(self) -> None:
        running = [slot for slot in self._slots if slot.running]
        for slot in running:
            assert slot.process is not None
            with contextlib.suppress(ProcessLookupError):
                slot.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(self._reap(slot) for slot in running))
        for slot in self._slots:
            self._close_channel(slot)

    async def _reap(self, slot: _Slot) -> None:
        process = slot.process
        assert process is not None
        patience = self._plan.grace_seconds + STOP_MARGIN_SECONDS
        try:
            code = await asyncio.wait_for(process.wait(), patience)
        except TimeoutError:
            log.error(
                "%s (pid %s) still running %gs after SIGTERM; killing it",
                slot.name,
                process.pid,
                patience,
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
        slot.serving = False
        slot.metrics_port = None
        log.info("%s (pid %s) stopped with %s", slot.name, process.pid, describe_exit(code))

    @staticmethod
    def _close_channel(slot: _Slot) -> None:
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = slot.reader = None
