"""``serve --record`` then ``replay``: real checks over gRPC recorded by the real service,
decided again by the command under the original bundle and under a deliberately changed
one, with the report and exit codes a CI gate reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from policy_service.testing import tool_call_body
from tests.support.bundles import CI_BOT_KEY, write_test_bundle
from tests.support.checks import check_request
from tests.support.envoy import free_port
from tests.support.serve import serve_command, serving


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policy_service", "replay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_recording_replayed_finds_a_deliberate_change(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    recording = tmp_path / "checks.jsonl"
    token = bundle.token("fininfo:read")
    port = free_port()
    command = serve_command(bundle.path, port, "--record", str(recording), "--audit-log", "off")
    calls = [
        ({"authorization": f"Bearer {token}"}, "get_quote"),
        ({"authorization": f"Bearer {token}"}, "list_symbols"),
        ({"x-api-key": CI_BOT_KEY}, "get_quote"),
        ({}, "get_quote"),
    ]
    codes = []
    with (
        serving([(port, command)], tmp_path),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for credential, tool in calls:
            headers = {**credential, "content-type": "application/json"}
            request = check_request(headers=headers, body=tool_call_body(tool, 1))
            codes.append(stub.Check(request, timeout=10).status.code)
    assert codes == [0, 0, 0, 16]  # allowed three times; UNAUTHENTICATED without a credential

    text = recording.read_text()
    assert len(text.splitlines()) == 4
    assert token not in text
    assert CI_BOT_KEY not in text

    unchanged = replay(str(recording), "--candidate", str(bundle.path))
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.stdout.startswith("4 checks replayed (recorded -> test-1), 0 changed")

    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        bundle.path.read_text()
        .replace("tools: [get_quote, list_symbols]", "tools: [list_symbols]")
        .replace("revision: test-1", "revision: test-2")
    )
    changed = replay(str(recording), "--baseline", str(bundle.path), "--candidate", str(candidate))
    assert changed.returncode == 1, changed.stderr
    summary, *lines = changed.stdout.splitlines()
    assert summary == "4 checks replayed (test-1 -> test-2), 2 changed: allow->deny 2"
    assert len(lines) == 2
    assert "tools/call get_quote  alice/test-client: allow (allowed, rule read) -> deny" in lines[0]
    assert "tools/call get_quote  ci-bot/ci-bot: allow (allowed, rule read) -> deny" in lines[1]

    as_json = replay(str(recording), "--candidate", str(candidate), "--format", "json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["baseline"] == "recorded"
    assert [change["after"]["reason"] for change in report["changes"]] == [
        "no_matching_rule",
        "no_matching_rule",
    ]

    broken = replay(str(tmp_path / "missing.jsonl"), "--candidate", str(candidate))
    assert broken.returncode == 2
    assert "missing.jsonl" in broken.stderr
