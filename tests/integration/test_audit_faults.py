"""Audit sink faults through a real ``policy-service serve``: a reader that stalls, a disk
that fills. Nothing is mocked: the faults are the kernel's.

- stdout piped to a ``cat`` that is stopped (SIGSTOP) mid-run: the pipe fills and stays
  full until it is continued (SIGCONT).
- the audit file under a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) set mid-run so
  that it falls inside the next line: a write lands in part, then fails with EFBIG, as
  on a full disk; the limit is raised again (prlimit) and writes recover.

Each run must answer every check within a bound while the fault lasts (closed: allowed
calls 503 ``audit_unavailable``; open: allowed), log the failure and the recovery, count
failed events in /metrics, and leave an audit stream whose every line parses, with
audit lines plus counted failures equal to checks sent. ``AUDIT_FAULT_CHECKS`` sets how
many checks a run sends (the default keeps the suite quick; 2000 measures under load).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.envoy import free_port
from tests.support.hang import hang_guard
from tests.support.serve import serve_command, wait_serving

CHECKS = int(os.environ.get("AUDIT_FAULT_CHECKS", "400"))
ANSWER_BOUND_SECONDS = 1.0


@pytest.fixture(autouse=True)
def guard() -> Iterator[None]:
    with hang_guard(120 + CHECKS * 0.05):
        yield


@dataclass
class Run:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    audit_unavailable: int = 0
    slowest: float = 0.0


def requests(bundle: TestBundle) -> list[external_auth_pb2.CheckRequest]:
    from tests.support.checks import check_request

    token = bundle.token("fininfo:read")
    headers = {
        "content-type": "application/json",
        "mcp-protocol-version": "2025-06-18",
        "authorization": f"Bearer {token}",
    }

    def call(tool: str) -> dict[str, object]:
        return {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": tool}}

    # An allowed call and a denied one (scope missing), in turn.
    return [
        check_request(headers=headers, body=call("get_quote")),
        check_request(headers=headers, body=call("place_trade")),
    ]


class Driver:
    """Sends checks on one connection, so with ``--workers`` one worker sees every phase."""

    def __init__(self, port: int, bundle: TestBundle) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.kinds = requests(bundle)
        self.run = Run()

    def send(self, count: int) -> None:
        run = self.run
        for _ in range(count):
            started = time.monotonic()
            response = self.stub.Check(self.kinds[run.sent % 2], timeout=5)
            run.slowest = max(run.slowest, time.monotonic() - started)
            run.sent += 1
            if response.HasField("ok_response"):
                run.statuses[200] += 1
            else:
                run.statuses[int(response.denied_response.status.code)] += 1
                run.audit_unavailable += "audit_unavailable" in response.denied_response.body


@contextmanager
def driving(port: int, bundle: TestBundle) -> Iterator[Driver]:
    driver = Driver(port, bundle)
    try:
        yield driver
    finally:
        driver.channel.close()


def audit_counts(metrics_port: int) -> Counter[str]:
    reply = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    reply.raise_for_status()
    counted: Counter[str] = Counter()
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name == "policy_service_audit_events_total":
                counted[sample.labels["result"]] += int(sample.value)
    return counted


def parse_lines(stream: bytes) -> tuple[list[dict[str, object]], list[bytes]]:
    """Events, and lines that do not parse (there must be none)."""
    assert stream.endswith(b"\n") or not stream, "the stream ends with a whole line"
    events, bad = [], []
    for line in stream.split(b"\n")[:-1]:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(line)
    return events, bad


@contextmanager
def serve(
    command: list[str], port: int, log: Path, *, stdout: int, preexec: Callable[[], None] | None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as err:
        process = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=preexec,
        )
    try:
        wait_serving(port, process, log)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def report(name: str, run: Run, counted: Counter[str], events: int, bad: int) -> None:
    print(
        f"\n{name}: sent {run.sent}, answers {dict(sorted(run.statuses.items()))} "
        f"(audit_unavailable {run.audit_unavailable}), slowest {run.slowest * 1000:.1f} ms, "
        f"audit lines parsed {events}, unparseable {bad}, counted written "
        f"{counted['written']} failed {counted['failed']}"
    )


@pytest.mark.parametrize(("mode", "workers"), [("closed", 1), ("open", 1), ("closed", 2)])
def test_stdout_piped_to_a_reader_that_stops(tmp_path: Path, mode: str, workers: int) -> None:
    bundle = write_test_bundle(tmp_path)
    port, metrics_port = free_port(), free_port()
    out = tmp_path / "audit.jsonl"
    read_end, write_end = os.pipe()
    with out.open("wb") as sink:
        reader = subprocess.Popen(["cat"], stdin=read_end, stdout=sink)
    os.close(read_end)
    command = serve_command(
        bundle.path,
        port,
        "--audit-failure",
        mode,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--workers",
        str(workers),
    )
    try:
        with (
            serve(command, port, tmp_path / "serve.log", stdout=write_end, preexec=None),
            driving(port, bundle) as driver,
        ):
            os.close(write_end)
            driver.send(CHECKS // 4)
            reader.send_signal(signal.SIGSTOP)  # the reader stalls; the pipe fills
            driver.send(CHECKS // 2)
            counted_during = audit_counts(metrics_port)
            reader.send_signal(signal.SIGCONT)
            driver.send(CHECKS - driver.run.sent)
            counted = audit_counts(metrics_port)
    finally:
        reader.send_signal(signal.SIGCONT)
        reader.wait(timeout=20)
    run = driver.run
    events, bad = parse_lines(out.read_bytes())
    report(f"stdout pipe stalled, {mode}, {workers} worker(s)", run, counted, len(events), len(bad))

    assert run.sent == CHECKS
    assert run.slowest < ANSWER_BOUND_SECONDS
    assert counted_during["failed"] > 0, "the stall made events fail"
    assert bad == []
    assert len(events) == counted["written"]
    assert counted["written"] + counted["failed"] == run.sent
    if mode == "closed":
        assert run.audit_unavailable > 0
        assert run.statuses[200] == sum(1 for event in events if event["decision"] == "allow")
    else:
        assert run.audit_unavailable == 0
        assert run.statuses[200] == (run.sent + 1) // 2
    log = (tmp_path / "serve.log").read_text()
    assert "audit events cannot be written to stdout" in log
    assert "audit events are written to stdout again" in log


def test_audit_file_that_fills_mid_line_then_frees(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    port, metrics_port = free_port(), free_port()
    out = tmp_path / "audit.jsonl"
    command = serve_command(
        bundle.path, port, "--audit-log", str(out), "--metrics-listen", f"127.0.0.1:{metrics_port}"
    )

    def no_sigxfsz() -> None:
        # Past the limit a write fails with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    log = tmp_path / "serve.log"
    with (
        serve(command, port, log, stdout=subprocess.DEVNULL, preexec=no_sigxfsz) as process,
        driving(port, bundle) as driver,
    ):
        driver.send(CHECKS // 4)
        # The disk fills: the limit falls 100 bytes into the next line, so each event from
        # now on is written in part and then fails, like a disk that runs out mid-write.
        full_at = out.stat().st_size + 100
        unlimited = resource.RLIM_INFINITY
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (full_at, unlimited))
        driver.send(CHECKS // 2)
        size_while_full = out.stat().st_size
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (unlimited, unlimited))
        driver.send(CHECKS - driver.run.sent)
        counted = audit_counts(metrics_port)
    run = driver.run
    events, bad = parse_lines(out.read_bytes())
    report("audit file full mid-line, closed", run, counted, len(events), len(bad))

    assert size_while_full == full_at - 100, "each cut line was truncated away"
    assert run.sent == CHECKS
    assert run.slowest < ANSWER_BOUND_SECONDS
    assert counted["failed"] == CHECKS // 2
    assert bad == []
    assert len(events) == counted["written"]
    assert counted["written"] + counted["failed"] == run.sent
    assert run.audit_unavailable == CHECKS // 4  # the allowed half of the checks while full
    assert run.statuses[200] == sum(1 for event in events if event["decision"] == "allow")
    text = log.read_text()
    assert "cannot be written to" in text
    assert "File too large" in text
    assert "written to " + str(out) + " again" in text
    assert f"{CHECKS // 2} events were lost meanwhile" in text
