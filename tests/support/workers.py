"""Run ``policy-service serve --workers N`` for tests: its log, its workers, checks, a guard.

The supervisor runs in a session of its own, so the guard (and every test's cleanup) can
kill it and every worker it started at once: a hung supervisor fails its test after
``GUARD_SECONDS`` instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.envoy import free_port
from tests.support.serve import serve_command

READY_SECONDS = 60.0
GUARD_SECONDS = 180.0  # the whole test, supervisor and workers included
CHECK_SECONDS = 15.0


@dataclass
class Supervised:
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    metrics_port: int
    workers: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(
        self, pattern: str, count: int = 1, timeout: float = READY_SECONDS
    ) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern`` in the log, once there are that many."""
        deadline = time.monotonic() + timeout
        while True:
            found = list(re.finditer(pattern, self.log(), re.MULTILINE))
            if len(found) >= count:
                return found[:count]
            if time.monotonic() > deadline:
                pytest.fail(f"{count} x {pattern!r} not in the log after {timeout}s:\n{self.log()}")
            if self.process.poll() is not None and len(found) < count:
                # Exited: one last read, then the log is all there will be.
                found = list(re.finditer(pattern, self.log(), re.MULTILINE))
                if len(found) >= count:
                    return found[:count]
                pytest.fail(
                    f"serve exited ({self.process.returncode}) before {pattern!r}:\n{self.log()}"
                )
            time.sleep(0.05)

    def worker_pids(self) -> dict[int, int]:
        """The pid serving in each worker slot, as the supervisor last logged it."""
        pids = {}
        for match in re.finditer(rf"worker (\d+)/{self.workers} pid (\d+) serving", self.log()):
            pids[int(match[1])] = int(match[2])
        return pids

    def worker_metrics_ports(self) -> dict[int, int]:
        """Each worker's own /metrics port (loopback), as its process last logged it."""
        ports = {}
        pattern = rf"\[worker (\d+)/{self.workers}\] policy_service.server metrics on http://127.0.0.1:(\d+)/"
        for match in re.finditer(pattern, self.log()):
            ports[int(match[1])] = int(match[2])
        return ports

    def stop(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill_all(self) -> None:
        # The session's process group: the supervisor and every worker, even orphaned ones.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def supervised(
    bundle: Path,
    logs: Path,
    *flags: str,
    workers: int = 2,
    stdout: int | IO[bytes] = subprocess.DEVNULL,
    ready: bool = True,
) -> Iterator[Supervised]:
    """``serve BUNDLE --workers N`` on a free port with /metrics on another; with ``ready``,
    once every worker serves. Always killed, workers included, at the end."""
    port, metrics_port = free_port(), free_port()
    command = serve_command(
        bundle,
        port,
        "--workers",
        str(workers),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        *flags,
    )
    log_path = logs / f"serve-workers-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    running = Supervised(process, log_path, port, metrics_port, workers)
    guard = threading.Timer(GUARD_SECONDS, running.kill_all)
    guard.daemon = True
    guard.start()
    try:
        if ready:
            running.wait_for_log(rf"{workers} workers serving")
        yield running
    finally:
        guard.cancel()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        running.kill_all()
        process.wait(timeout=10)


def channel_of_its_own(port: int) -> grpc.Channel:
    """A channel with a TCP connection of its own (gRPC would otherwise share one between
    channels to the same address): the kernel picks a worker per connection."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def check(channel: grpc.Channel, request: Any) -> external_auth_pb2.CheckResponse:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    response: external_auth_pb2.CheckResponse = stub.Check(request, timeout=CHECK_SECONDS)
    return response


def scrape(port: int) -> list[Any]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return list(text_string_to_metric_families(response.text))


def checks_counted(port: int) -> int:
    """policy_service_checks_total over every label set, as /metrics on ``port`` says."""
    return int(
        sum(
            sample.value
            for family in scrape(port)
            for sample in family.samples
            if sample.name == "policy_service_checks_total"
        )
    )


def samples_named(port: int, name: str) -> list[Any]:
    return [sample for family in scrape(port) for sample in family.samples if sample.name == name]
