"""Audit sinks that fail for real: a pipe nobody reads, a file past its size limit.

No write path is mocked: the pipe is an ``os.pipe()`` whose read end is not read, and the
size limit is the kernel's RLIMIT_FSIZE in a child process (SIGXFSZ ignored, so a write
past it lands in part and then fails with EFBIG, as on a disk that fills mid-line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from policy_service.app import build_gateway, build_servicer
from policy_service.telemetry.audit import TORN_LINE_END, AuditFailureMode, Auditor, FileSink
from policy_service.telemetry.metrics import CheckMetrics
from policy_service.telemetry.trail import Trail
from policy_service.testing import ServicerContext, tool_call_body
from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.checks import check_request
from tests.support.hang import hang_guard

CHECKS = 100
ANSWER_BOUND_SECONDS = 1.0


@pytest.fixture(autouse=True)
def guard() -> Iterator[None]:
    with hang_guard(60):
        yield


def drain(read_end: int) -> bytes:
    os.set_blocking(read_end, False)
    chunks = []
    while True:
        try:
            chunk = os.read(read_end, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def fill(write_end: int) -> None:
    """Fill the pipe as a stalled reader leaves it (the sink has made it non-blocking)."""
    while True:
        try:
            os.write(write_end, b"\n" * 4096)  # empty lines: the stream stays line by line
        except BlockingIOError:
            return


class Service:
    def __init__(self, bundle: TestBundle, sink: FileSink, mode: AuditFailureMode) -> None:
        self.metrics = CheckMetrics()
        self.trail = Trail(auditor=Auditor(sink, mode), metrics=self.metrics)
        self.gateway = build_gateway(bundle.bundle, self.trail)
        self.service = build_servicer(self.gateway, self.trail)
        headers = {
            "content-type": "application/json",
            "mcp-protocol-version": "2025-06-18",
            "authorization": f"Bearer {bundle.token('fininfo:read')}",
        }
        self.allowed = check_request(headers=headers, body=tool_call_body("get_quote", 1))
        self.denied = check_request(headers=headers, body=tool_call_body("place_trade", 2))

    async def check(self, request: external_auth_pb2.CheckRequest) -> tuple[int, str, float]:
        started = time.monotonic()
        response = await asyncio.wait_for(
            self.service.Check(request, ServicerContext()), ANSWER_BOUND_SECONDS
        )
        seconds = time.monotonic() - started
        if response.HasField("ok_response"):
            return 200, "", seconds
        return int(response.denied_response.status.code), response.denied_response.body, seconds

    def counted(self, result: str) -> int:
        value = self.metrics.registry.get_sample_value(
            "policy_service_audit_events_total", {"result": result}
        )
        return int(value or 0)


@pytest.mark.parametrize("mode", [AuditFailureMode.CLOSED, AuditFailureMode.OPEN])
async def test_a_pipe_nobody_reads_fails_events_without_holding_up_checks(
    tmp_path: Path, mode: AuditFailureMode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="policy_service.audit")
    read_end, write_end = os.pipe()
    service = Service(write_test_bundle(tmp_path), FileSink(write_end, "pipe", owned=True), mode)
    await service.gateway.state.jwt.start()
    fill(write_end)

    answers: Counter[tuple[int, bool]] = Counter()
    slowest = 0.0
    for turn in range(CHECKS):
        request = service.allowed if turn % 2 == 0 else service.denied
        status, body, seconds = await service.check(request)
        answers[status, "audit_unavailable" in body] += 1
        slowest = max(slowest, seconds)

    assert slowest < 0.1, "a stalled reader never holds up a check"
    if mode is AuditFailureMode.CLOSED:
        assert answers == {(503, True): CHECKS // 2, (403, False): CHECKS // 2}
    else:
        assert answers == {(200, False): CHECKS // 2, (403, False): CHECKS // 2}
    assert (service.counted("written"), service.counted("failed")) == (0, CHECKS)
    assert "audit events cannot be written to pipe (Resource temporarily unavailable)" in (
        caplog.text
    )
    assert "denials go out unaudited" in caplog.text

    stalled = drain(read_end)  # the reader catches up
    assert stalled.strip(b"\n") == b"", "no event got in while the pipe was full"
    status, _, _ = await service.check(service.allowed)
    assert status == 200
    after = drain(read_end)
    os.close(read_end)
    service.trail.close()
    event = json.loads(after)
    assert event["decision"] == "allow"
    assert (service.counted("written"), service.counted("failed")) == (1, CHECKS)
    lost = CHECKS // 2
    fate = "refused with 503" if mode is AuditFailureMode.CLOSED else "let through"
    assert (
        f"events were lost meanwhile ({lost} allowed calls {fate}, {lost} denials and 0 served "
        "answers sent unaudited)"
    ) in caplog.text


def test_a_long_line_a_pipe_takes_in_part_never_reads_as_an_event() -> None:
    read_end, write_end = os.pipe()
    auditor = Auditor(FileSink(write_end, "pipe", owned=True), AuditFailureMode.CLOSED)
    fill(write_end)
    os.read(read_end, 8192)  # room for part of the next line, not all of it
    long_event: dict[str, Any] = {"decision": "allow", "arguments": "a" * 20_000}
    started = time.monotonic()
    assert auditor.write(long_event) is False
    assert time.monotonic() - started < 0.1
    assert auditor.write({"decision": "deny"}) is False, "nothing glues onto the fragment"
    received = drain(read_end)
    assert auditor.write({"decision": "deny", "n": 1}) is True
    received += drain(read_end)
    auditor.close()
    os.close(read_end)
    lines = [line for line in received.split(b"\n") if line]
    assert lines[0].startswith(b'{"decision":"allow","arguments":"aaa')
    assert lines[0].endswith(TORN_LINE_END.rstrip(b"\n"))
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])
    assert [json.loads(line) for line in lines[1:]] == [{"decision": "deny", "n": 1}]
    assert (auditor.written, auditor.failed) == (1, 2)


def test_no_cut_of_a_line_ended_as_torn_parses() -> None:
    # Every place a write can stop, all but the newline included.
    line = json.dumps({"decision": "allow", "caller": {"subject": "a\\"}, "rules": ["r"]})
    for cut in range(1, len(line) + 1):
        with pytest.raises(json.JSONDecodeError):
            json.loads(line[:cut] + TORN_LINE_END.decode())


FILLS_MID_LINE = """
import json, os, resource, signal, sys
from pathlib import Path
from policy_service.telemetry.audit import AuditFailureMode, Auditor, FileSink

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, not death
path = Path(sys.argv[1])
auditor = Auditor(FileSink.open(path), AuditFailureMode.CLOSED)
event = {"decision": "allow", "reason": "allowed", "padding": "p" * 200}
assert auditor.write(event)
full_at = path.stat().st_size + 100  # the limit falls inside the next line
resource.setrlimit(resource.RLIMIT_FSIZE, (full_at, resource.RLIM_INFINITY))
results = [auditor.write({**event, "n": n}) for n in range(5)]
size_while_full = path.stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
results.append(auditor.write({**event, "n": 5}))
auditor.close()
print(json.dumps({"results": results, "full_at": full_at, "size_while_full": size_while_full,
                  "written": auditor.written, "failed": auditor.failed}))
"""


def test_a_file_that_fills_mid_line_keeps_no_fragment(tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    child = subprocess.run(
        [sys.executable, "-c", FILLS_MID_LINE, str(out)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["results"] == [False] * 5 + [True]
    assert report["size_while_full"] == report["full_at"] - 100, "each cut was truncated away"
    assert (report["written"], report["failed"]) == (2, 5)
    assert "File too large" in child.stderr  # logged
    assert "written to " + str(out) + " again" in child.stderr
    assert "5 events were lost meanwhile (5 allowed calls refused with 503" in child.stderr
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line).get("n") for line in lines[:-1]] == [None, 5]
