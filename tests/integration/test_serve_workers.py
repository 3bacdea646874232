"""`policy-service serve --workers 2`: a real supervisor and its real worker processes.

Every test starts ``python -m policy_service serve BUNDLE --workers 2`` on a free port and
talks to it as Envoy and Prometheus would: gRPC Check calls over connections of their own
(the kernel hands each connection to one worker), /metrics over HTTP, signals to the
supervisor. Which worker decided what is read from each worker's own registry (its port is
in its log line), never assumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2

from policy_service.dev.redis_server import RedisServer
from policy_service.telemetry.audit import TORN_LINE_END
from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.checks import check_request
from tests.support.serve import serve_command
from tests.support.workers import (
    Supervised,
    channel_of_its_own,
    check,
    checks_counted,
    samples_named,
    supervised,
)

LIMITS = """\
  - name: per-client
    rate: 1000000/min
    key: [client]
"""
# Eight strings of 1,000 characters (the audit cuts at 1,024): an event of about 9 KB,
# more than PIPE_BUF, so the kernel does not promise to write it whole.
BIG_ARGUMENTS = {f"field{index}": "x" * 1000 for index in range(8)}


def tool_call(bundle: TestBundle, arguments: dict[str, str] | None = None) -> Any:
    params: dict[str, Any] = {"name": "get_quote"}
    if arguments is not None:
        params["arguments"] = arguments
    return check_request(
        headers={
            "content-type": "application/json",
            "mcp-protocol-version": "2025-06-18",
            "authorization": f"Bearer {bundle.token('fininfo:read')}",
        },
        body={"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params},
    )


def allowed(response: external_auth_pb2.CheckResponse) -> bool:
    return bool(response.HasField("ok_response"))


def per_worker_checks(serve: Supervised) -> dict[int, int]:
    return {index: checks_counted(port) for index, port in serve.worker_metrics_ports().items()}


def check_until_both_served(
    serve: Supervised, send: Callable[[int], int], rounds: int = 16
) -> tuple[int, dict[int, int]]:
    """Call ``send(round)`` (which checks over new connections and returns how many) until
    each worker has decided some; the kernel spreads connections at random."""
    sent = 0
    counts: dict[int, int] = {}
    for turn in range(rounds):
        sent += send(turn)
        counts = per_worker_checks(serve)
        if len(counts) == serve.workers and all(counts.values()):
            break
    return sent, counts


def checks_on_new_connections(
    serve: Supervised, requests: list[Any], connections: int = 4
) -> Callable[[int], int]:
    """Each round: ``connections`` connections at once, each sending every request."""

    def one_connection(_: int) -> int:
        with channel_of_its_own(serve.port) as channel:
            for request in requests:
                assert allowed(check(channel, request))
        return len(requests)

    def send(_: int) -> int:
        with ThreadPoolExecutor(connections) as pool:
            return sum(pool.map(one_connection, range(connections)))

    return send


def audit_lines(data: bytes) -> list[dict[str, Any]]:
    lines = data.split(b"\n")
    assert lines[-1] == b"", "the stream must end with a whole line"
    return [json.loads(line) for line in lines[:-1]]


def test_both_workers_serve_one_port_and_one_metrics_endpoint_counts_every_check(
    tmp_path: Path,
) -> None:
    bundle = write_test_bundle(tmp_path)
    audit = tmp_path / "audit.jsonl"
    with supervised(bundle.path, tmp_path, "--audit-log", str(audit)) as serve:
        assert set(serve.worker_pids()) == {1, 2}
        assert serve.process.pid not in serve.worker_pids().values()
        send = checks_on_new_connections(serve, [tool_call(bundle)] * 3)
        sent, counts = check_until_both_served(serve, send)
        assert all(counts.values()), f"one worker got every connection: {counts}"
        assert sum(counts.values()) == sent
        assert checks_counted(serve.metrics_port) == sent
        info = samples_named(serve.metrics_port, "policy_service_bundle_info")
        assert {(s.labels["worker"], s.labels["revision"]) for s in info} == {
            ("1", "test-1"),
            ("2", "test-1"),
        }
        (alive,) = samples_named(serve.metrics_port, "policy_service_workers_alive")
        assert alive.value == 2
        assert serve.stop() == 0
    assert len(audit_lines(audit.read_bytes())) == sent
    log = serve.log()
    for index in (1, 2):
        assert f"INFO policy_service.workers worker {index}/2 pid " in log
        assert f"[worker {index}/2] policy_service.server serving ext_authz on" in log


def test_long_audit_events_from_both_workers_in_one_file_are_never_torn(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path, audit="  include_arguments: true\n")
    audit = tmp_path / "audit.jsonl"
    requests = [tool_call(bundle, BIG_ARGUMENTS), tool_call(bundle)] * 10
    with supervised(bundle.path, tmp_path, "--audit-log", str(audit)) as serve:
        send = checks_on_new_connections(serve, requests, connections=6)
        sent, counts = check_until_both_served(serve, send)
        assert all(counts.values()), counts
        assert serve.stop() == 0
    raw = audit.read_bytes()
    events = audit_lines(raw)
    assert len(events) == sent
    long_lines = [line for line in raw.split(b"\n") if len(line) + 1 > select.PIPE_BUF]
    assert len(long_lines) == sent // 2
    assert {event["decision"] for event in events} == {"allow"}


def test_long_audit_events_from_both_workers_on_one_stdout_pipe_are_never_torn(
    tmp_path: Path,
) -> None:
    bundle = write_test_bundle(tmp_path, audit="  include_arguments: true\n")
    requests = [tool_call(bundle, BIG_ARGUMENTS), tool_call(bundle)] * 10
    received = bytearray()

    def read_slowly(pipe: Any) -> None:
        # A slow reader fills the pipe, so long writes go out in pieces: where other
        # workers' lines would land in between, were they not serialized.
        while chunk := pipe.read1(4096):
            received.extend(chunk)
            time.sleep(0.001)

    # Open: a line the slow reader cannot take in time fails (a sink that cannot take an
    # event at once is a failing one) and is counted, and the call still goes through.
    flags = ("--audit-log", "-", "--audit-failure", "open")
    with supervised(bundle.path, tmp_path, *flags, stdout=subprocess.PIPE) as serve:
        assert serve.process.stdout is not None
        reader = threading.Thread(target=read_slowly, args=(serve.process.stdout,), daemon=True)
        reader.start()
        send = checks_on_new_connections(serve, requests, connections=6)
        sent, counts = check_until_both_served(serve, send)
        assert all(counts.values()), counts
        audited = {
            sample.labels["result"]: int(sample.value)
            for sample in samples_named(serve.metrics_port, "policy_service_audit_events_total")
        }
        assert serve.stop() == 0
        reader.join(timeout=30)
    # A long line the reader took only in part within the write's bound failed, and was
    # ended as torn before the next line: it never parses as an event and glues to none.
    lines = bytes(received).split(b"\n")
    assert lines[-1] == b"", "the stream must end with a whole line"
    torn = [line for line in lines[:-1] if line.endswith(TORN_LINE_END.rstrip(b"\n"))]
    events = [json.loads(line) for line in lines[:-1] if line not in torn]
    assert len(events) == audited["written"]
    assert len(torn) <= audited.get("failed", 0)
    assert audited["written"] + audited.get("failed", 0) == sent
    assert audited["written"] > sent // 4, "a reader slow for moments still gets lines"


def test_sigterm_drains_every_worker_and_lets_an_in_flight_check_finish(
    tmp_path: Path, clean_redis: RedisServer
) -> None:
    # The check waits on a frozen Redis (buckets there), so it is surely in flight when
    # the supervisor gets SIGTERM; Redis thawing lets it finish within the grace period.
    bundle = write_test_bundle(tmp_path, limits=LIMITS)
    request = tool_call(bundle)
    flags = ("--redis-url", clean_redis.url, "--redis-timeout", "8", "--grace", "20")
    with supervised(bundle.path, tmp_path, *flags) as serve:
        with channel_of_its_own(serve.port) as channel:
            assert allowed(check(channel, request))
        channel = channel_of_its_own(serve.port)
        clean_redis.pause()
        try:
            with ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(check, channel, request)
                time.sleep(1.0)
                assert not in_flight.done()
                serve.process.send_signal(signal.SIGTERM)
                serve.wait_for_log(r"\[worker \d/2\] policy_service.server signal received", 2)
                time.sleep(0.5)
                assert not in_flight.done(), "the check cannot finish while Redis is frozen"
                clean_redis.resume()
                assert allowed(in_flight.result(timeout=15))
        finally:
            clean_redis.resume()
            channel.close()
        assert serve.process.wait(timeout=60) == 0
    log = serve.log()
    assert "SIGTERM received; stopping the workers" in log
    for index in (1, 2):
        assert f"[worker {index}/2] policy_service.server stopped" in log
        assert f"worker {index}/2 (pid " in log


def test_a_killed_worker_is_restarted_and_checks_go_on(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    request = tool_call(bundle)
    with supervised(bundle.path, tmp_path) as serve:
        victim = serve.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        serve.wait_for_log(
            rf"WARNING policy_service.workers worker 1/2 \(pid {victim}\) exited with "
            r"signal 9 \(SIGKILL\); restarting in 0.5s"
        )
        serve.wait_for_log(r"worker 1/2 pid \d+ serving", count=2)
        successor = serve.worker_pids()[1]
        assert successor != victim
        send = checks_on_new_connections(serve, [request] * 3)
        sent, counts = check_until_both_served(serve, send)
        assert counts[1] > 0, "the new worker 1 serves"
        assert sum(counts.values()) == sent
        (restarts,) = [
            sample
            for sample in samples_named(serve.metrics_port, "policy_service_worker_restarts_total")
            if sample.labels["worker"] == "1"
        ]
        assert restarts.value == 1
        assert serve.stop() == 0


def test_a_worker_still_running_after_grace_and_margin_is_killed(tmp_path: Path) -> None:
    # A frozen worker cannot act on SIGTERM: the supervisor kills it once --grace (0 here)
    # and its margin are up, says so, and still exits 0.
    bundle = write_test_bundle(tmp_path)
    with supervised(bundle.path, tmp_path, "--grace", "0") as serve:
        frozen = serve.worker_pids()[2]
        os.kill(frozen, signal.SIGSTOP)
        try:
            assert serve.stop() == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
    log = serve.log()
    assert (
        f"ERROR policy_service.workers worker 2/2 (pid {frozen}) still running 5s after "
        "SIGTERM; killing it"
    ) in log
    assert f"worker 2/2 (pid {frozen}) stopped with signal 9 (SIGKILL)" in log
    assert "worker 1/2 (pid " in log
    assert "[worker 1/2] policy_service.server stopped" in log


def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    with supervised(bundle.path, tmp_path, "--no-watch") as serve:
        bundle.path.write_text(
            bundle.path.read_text().replace("revision: test-1", "revision: test-2")
        )
        serve.process.send_signal(signal.SIGHUP)
        serve.wait_for_log(
            r"\[worker \d/2\] policy_service.reload bundle revision test-1 -> test-2", 2
        )
        info = samples_named(serve.metrics_port, "policy_service_bundle_info")
        assert {(s.labels["worker"], s.labels["revision"]) for s in info} == {
            ("1", "test-2"),
            ("2", "test-2"),
        }
        assert serve.stop() == 0


def test_a_reload_that_adds_limits_kept_in_process_is_refused_by_every_worker(
    tmp_path: Path,
) -> None:
    bundle = write_test_bundle(tmp_path)
    with supervised(bundle.path, tmp_path, "--no-watch") as serve:
        text = bundle.path.read_text().replace("revision: test-1", "revision: test-2")
        bundle.path.write_text(text + "limits:\n" + LIMITS)
        serve.process.send_signal(signal.SIGHUP)
        serve.wait_for_log(
            r"\[worker \d/2\] policy_service.reload bundle reload refused, still serving "
            r"revision test-1: --workers 2 with rate limits kept in process would give every "
            r"worker its own buckets",
            count=2,
        )
        (failed,) = [
            sample
            for sample in samples_named(serve.metrics_port, "policy_service_bundle_loads_total")
            if sample.labels["result"] == "failed"
        ]
        assert failed.value == 2
        assert serve.stop() == 0


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    with supervised(bundle.path, tmp_path) as serve:
        workers = list(serve.worker_pids().values())
        serve.process.kill()
        serve.process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), serve.log()
        assert serve.log().count("the supervisor is gone; stopping") == 2


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its new parent to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _run_serve(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_limits_kept_in_process_are_refused_before_any_worker_starts(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path, limits=LIMITS)
    result = _run_serve(serve_command(bundle.path, 19_999, "--workers", "2"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "policy-service serve: --workers 2 with rate limits kept in process would give every "
        "worker its own buckets, multiplying each limit by 2; give --redis-url so the workers "
        "share their buckets in Redis"
    )
    assert "worker 1/2" not in result.stderr


def test_a_port_chosen_by_the_kernel_cannot_be_shared(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    result = _run_serve(serve_command(bundle.path, 0, "--workers", "2"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "policy-service serve: --workers 2 needs a fixed port to share: --listen "
        "127.0.0.1:0 would give every worker a port of its own"
    )


def test_a_worker_that_cannot_start_stops_the_others_and_names_the_cause(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody may share this port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_serve(serve_command(bundle.path, port, "--workers", "2"))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("policy-service serve: worker ")
    assert f"could not start: Failed to bind to address 127.0.0.1:{port}" in last
    assert "pid" not in last
    assert not re.search(r"pid \d+ serving", result.stderr)
