"""The response side end to end: real Envoy, the policy service on ext_proc, the demo peers,
the real MCP SDK client.

Secrets planted by the demo fininfo server (``get_account_notes``) reach the client redacted,
the audit log names kinds and counts only, an SSE answer still streams event by event, an
answer over ``max_body_bytes`` fails closed as a JSON-RPC error, and a tools/call on an
upstream without redaction never opens an ext_proc stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from policy_service.dev import demo_fininfo
from policy_service.gateway.demo_topology import CURRENTTIME
from tests.e2e.conftest import Stack, start_stack
from tests.support.peers import RpcError, mcp_call_tool, tool_text

MAX_BODY_BYTES = 8192  # above the tools/list answer (about 3.4 kB), far below a long statement
RESPONSES = f"""\
      max_body_bytes: {MAX_BODY_BYTES}
      redact:
        patterns:
          - {{name: employee_id, regex: 'EMP-[0-9]{{6}}'}}
"""
SECRETS = (
    demo_fininfo.FAKE_AWS_ACCESS_KEY,
    demo_fininfo.FAKE_JWT,
    demo_fininfo.FAKE_GITHUB_TOKEN,
    "BEGIN PRIVATE KEY",
    "EMP-204817",
)
# Each planted secret is in the result twice: in its structured content, and in the text
# block the SDK renders from it.
REDACTED = {"aws_access_key": 2, "jwt": 2, "private_key": 2, "github_token": 2, "employee_id": 2}


@dataclass
class Answers:
    stack: Stack
    audit_log: Path

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def notes_token(self) -> dict[str, str]:
        return self.stack.bearer("fininfo:read", "fininfo:notes", audience=self.stack.fininfo_url)

    def ext_proc_streams(self) -> int:
        """Streams Envoy's ext_proc filter (stat prefix ``answers``) has opened, on every
        listener together."""
        stats = self.stack.envoy.admin_get("/stats?filter=ext_proc")
        total = 0
        for line in stats.splitlines():
            name, _, value = line.partition(": ")
            if ".answers." in name and name.endswith(".streams_started"):
                total += int(value)
        return total


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Answers]:
    tmp = tmp_path_factory.mktemp("answers")
    audit_log = tmp / "audit.jsonl"
    for stack in start_stack(tmp, fininfo_responses=RESPONSES, audit_log=audit_log):
        yield Answers(stack, audit_log)


async def _answer_event(answers: Answers, since: int, kind: str) -> dict[str, Any]:
    """The first "answer" event after line ``since`` that redacted ``kind``: the service
    writes it when Envoy closes the stream, which may be just after the client has read."""
    deadline = time.monotonic() + 10
    while True:
        for event in answers.events()[since:]:
            if event["decision"] == "answer" and kind in event["answer"].get("redacted", {}):
                return event
        assert time.monotonic() < deadline, "no answer event redacting " + kind
        await asyncio.sleep(0.05)


async def test_planted_secrets_reach_the_client_redacted_and_the_audit_names_kinds_only(
    answers: Answers, caplog: pytest.LogCaptureFixture
) -> None:
    since = len(answers.events())
    result = await mcp_call_tool(
        answers.stack.fininfo_url,
        "get_account_notes",
        {"account": "A-1"},
        headers=answers.notes_token(),
    )

    assert not result.is_error
    text = tool_text(result)
    structured = result.structured_content
    assert structured is not None
    for kind in ("aws_access_key", "jwt", "private_key", "github_token"):
        assert f"[redacted:{kind}]" in text
    assert "[redacted:aws_access_key]" in structured["notes"]
    assert "[redacted:private_key]" in structured["notes"]
    assert structured["credentials"] == {"github_token": "[redacted:github_token]"}
    assert structured["account"] == "A-1"  # what is not a secret is left alone
    for secret in SECRETS:
        assert secret not in text
        assert secret not in json.dumps(structured)

    event = await _answer_event(answers, since, "aws_access_key")
    assert event["reason"] == "rewritten"
    assert event["target"]["upstream"] == "fininfo"
    assert event["answer"]["redacted"] == REDACTED
    assert event["answer"]["status"] == 200
    # No secret anywhere in what the service recorded: the audit log or its own logs.
    audit_text = answers.audit_log.read_text()
    for secret in SECRETS:
        assert secret not in audit_text
        assert secret not in caplog.text


async def test_a_bundle_pattern_is_redacted(answers: Answers) -> None:
    result = await mcp_call_tool(
        answers.stack.fininfo_url,
        "get_account_notes",
        {"account": "EMP-000001"},
        headers=answers.notes_token(),
    )

    structured = result.structured_content
    assert structured is not None
    # The argument echoed back is an employee id too: the bundle's pattern finds it.
    assert structured["account"] == "[redacted:employee_id]"
    assert "Owner: [redacted:employee_id]." in structured["notes"]
    assert "EMP-" not in tool_text(result)


async def test_an_sse_answer_still_streams_event_by_event(answers: Answers) -> None:
    received: list[tuple[float, float]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        received.append((time.time(), progress))

    steps = 4
    result = await mcp_call_tool(
        answers.stack.fininfo_url,
        "stream_report",
        {"steps": steps, "delay_seconds": 0.5},
        headers=answers.notes_token(),
        progress_callback=on_progress,
    )

    assert not result.is_error
    assert [progress for _, progress in received] == [1, 2, 3, 4]
    assert result.structured_content is not None
    last_sent = result.structured_content["last_event_sent_at"]
    # The first event reached the client before the server wrote the last one (1.5 s
    # later): the gateway did not hold the stream to the end. Same host, same clock.
    first_received = received[0][0]
    assert first_received < last_sent, (first_received, last_sent)


async def test_an_answer_over_the_cap_is_a_json_rpc_error_and_the_service_keeps_serving(
    answers: Answers,
) -> None:
    headers = answers.notes_token()
    with pytest.raises(RpcError) as raised:  # an RpcError is an HTTP 2xx answer
        await mcp_call_tool(
            answers.stack.fininfo_url,
            "get_statement",
            {"account": "A-1", "lines": 2000},
            headers=headers,
        )

    assert raised.value.code == 502
    assert raised.value.data == {"reason": "response_too_large"}
    # The statement itself never reaches the client, and the next answers are served.
    small = await mcp_call_tool(
        answers.stack.fininfo_url,
        "get_statement",
        {"account": "A-1", "lines": 3},
        headers=headers,
    )
    assert not small.is_error
    assert small.structured_content is not None
    assert len(small.structured_content["lines"]) == 3


async def test_only_answers_that_need_work_open_an_ext_proc_stream(answers: Answers) -> None:
    stack = answers.stack
    url = CURRENTTIME.url(stack.url)  # no responses: block, so lists filtered, calls not
    token = stack.bundle.token("time:read", audience=url)

    def post(method: str, params: dict[str, Any]) -> httpx.Response:
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        headers = {
            "Authorization": f"Bearer {token}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": method,
        }
        if "name" in params:
            headers["mcp-name"] = params["name"]
        message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
        return httpx.post(url, json=message, headers=headers, timeout=10)

    before = answers.ext_proc_streams()
    call = post("tools/call", {"name": "current_time", "arguments": {"timezone": "UTC"}})
    assert call.status_code == 200
    assert "UTC" in call.text
    after_call = answers.ext_proc_streams()
    listing = post("tools/list", {})
    assert listing.status_code == 200
    assert "current_time" in listing.text
    after_list = answers.ext_proc_streams()

    assert after_call == before
    assert after_list == before + 1
