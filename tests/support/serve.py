"""Run real ``policy-service serve`` processes for tests, and wait until they serve."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

READY_SECONDS = 30.0


def serve_command(bundle: Path, port: int, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "policy_service",
        "serve",
        str(bundle),
        "--listen",
        f"127.0.0.1:{port}",
        *flags,
    ]


def wait_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.05)
    pytest.fail(
        f"serve on port {port} never became ready (exit {process.poll()}):\n{log.read_text()}"
    )


@contextlib.contextmanager
def serving(commands: Sequence[tuple[int, list[str]]], logs: Path) -> Iterator[None]:
    """Start one process per (port, command), wait until each serves, always stop them."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index, (_, command) in enumerate(commands):
            with (logs / f"serve-{index}.log").open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        command,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
        for index, ((port, _), process) in enumerate(zip(commands, processes, strict=True)):
            wait_serving(port, process, logs / f"serve-{index}.log")
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
