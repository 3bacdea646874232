"""One answer through the response side, without Envoy: JSON held to the cap, SSE event by
event, every failure a JSON-RPC error, and an audit event with kinds and counts only."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from policy_service.answering import AnswerProcessing, BodyMode, ResponsePipeline
from policy_service.responses.guard import AnswerGuard
from policy_service.responses.plan import PLAN_METADATA_KEY, PlannedCall, ResponsePlan
from policy_service.state import BundleState, ServingBundles
from policy_service.telemetry.audit import AuditFailureMode, Auditor
from policy_service.testing import MemoryAuditSink
from tests.support.bundles import write_test_bundle

LIMIT = 1024  # the smallest cap a bundle may set
RESPONSES = f"""\
      max_body_bytes: {LIMIT}
      redact:
        patterns:
          - {{name: employee_id, regex: 'EMP-[0-9]{{6}}'}}
"""
REQUEST_ID = 7
AWS = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example key id, split for scanners
EMPLOYEE = "EMP-204817"
JSON_HEADERS = {"content-type": "application/json"}
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8"}


@pytest.fixture
def sink() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def pipeline(tmp_path: Path, sink: MemoryAuditSink) -> ResponsePipeline:
    bundle = write_test_bundle(tmp_path, fininfo_responses=RESPONSES).bundle
    bundles = ServingBundles(BundleState.from_bundle(bundle))
    return ResponsePipeline(bundles, AnswerGuard(), Auditor(sink, AuditFailureMode.CLOSED))


def _open(pipeline: ResponsePipeline) -> AnswerProcessing:
    plan = ResponsePlan(
        "fininfo", "decision-1", (PlannedCall(REQUEST_ID, "tools/call", "get_account_notes"),)
    )
    return pipeline.open(plan.to_metadata()[PLAN_METADATA_KEY])


def _result(text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": REQUEST_ID,
        "result": {"content": [{"type": "text", "text": text}], "isError": False},
    }


def _padded(text: str, size: int) -> bytes:
    """A tools/call answer of exactly ``size`` bytes carrying ``text``."""
    body = orjson.dumps(_result(text))
    return orjson.dumps(_result(text + " " * (size - len(body))))


def _sse(message: dict[str, Any]) -> bytes:
    return b"event: message\r\ndata: " + orjson.dumps(message) + b"\r\n\r\n"


def _error(body: bytes, reason: str) -> None:
    message = orjson.loads(body.removeprefix(b"event: message\ndata: ").strip())
    assert message == {
        "jsonrpc": "2.0",
        "id": REQUEST_ID,
        "error": {"code": 502, "message": message["error"]["message"], "data": {"reason": reason}},
    }


# --- JSON -----------------------------------------------------------------------------


async def test_a_json_answer_is_held_to_its_end_and_goes_out_redacted(
    pipeline: ResponsePipeline,
) -> None:
    answer = _open(pipeline)
    body = orjson.dumps(_result(f"owner {EMPLOYEE} key {AWS}"))

    outcome = await answer.on_headers(200, JSON_HEADERS)
    held = [answer.on_body(body[:10], False), answer.on_body(body[10:20], False)]
    last = answer.on_body(body[20:], True)

    assert outcome.body is BodyMode.JSON
    assert outcome.remove_headers == ("content-length",)
    assert held == [b"", b""]
    text = orjson.loads(last)["result"]["content"][0]["text"]
    assert text == "owner [redacted:employee_id] key [redacted:aws_access_key]"


async def test_a_json_answer_exactly_at_the_cap_is_read(pipeline: ResponsePipeline) -> None:
    answer = _open(pipeline)
    body = _padded(AWS, LIMIT)
    assert len(body) == LIMIT
    await answer.on_headers(200, JSON_HEADERS)

    answer.on_body(body[:500], False)
    last = answer.on_body(body[500:], True)

    assert orjson.loads(last)["result"]["content"][0]["text"].startswith("[redacted:aws_")
    assert answer.report.failure is None


async def test_a_json_answer_one_byte_over_the_cap_is_an_error(
    pipeline: ResponsePipeline,
) -> None:
    answer = _open(pipeline)
    body = _padded(AWS, LIMIT + 1)
    await answer.on_headers(200, JSON_HEADERS)

    first = answer.on_body(body[:500], False)
    rest = answer.on_body(body[500:-1], False)
    last = answer.on_body(body[-1:], True)

    assert (first, rest) == (b"", b"")
    _error(last, "response_too_large")
    assert AWS.encode() not in last


async def test_invalid_json_is_an_unreadable_answer(pipeline: ResponsePipeline) -> None:
    answer = _open(pipeline)
    await answer.on_headers(200, JSON_HEADERS)

    _error(answer.on_body(b'{"jsonrpc": "2.0", "id": 7, "result": {', True), "response_unreadable")


async def test_a_2xx_answer_neither_json_nor_sse_is_replaced_by_a_json_error(
    pipeline: ResponsePipeline,
) -> None:
    answer = _open(pipeline)

    outcome = await answer.on_headers(200, {"content-type": "text/plain"})
    last = answer.on_body(f"key {AWS}".encode(), True)

    # Labelled as what it now is: clients drop a body of a type they don't speak.
    assert outcome.set_headers == (("content-type", "application/json"),)
    _error(last, "response_unreadable")


async def test_an_error_status_passes_untouched(pipeline: ResponsePipeline) -> None:
    answer = _open(pipeline)

    outcome = await answer.on_headers(404, JSON_HEADERS)

    assert outcome.body is BodyMode.NONE


# --- SSE ------------------------------------------------------------------------------


async def test_each_sse_event_goes_out_in_the_chunk_that_completes_it(
    pipeline: ResponsePipeline,
) -> None:
    answer = _open(pipeline)
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    first, second = _sse(progress), _sse(_result(f"key {AWS}"))

    outcome = await answer.on_headers(200, SSE_HEADERS)
    out = [
        answer.on_body(first[:5], False),
        answer.on_body(first[5:] + second[:30], False),
        answer.on_body(second[30:], False),
        answer.on_body(b"", True),
    ]

    assert outcome.body is BodyMode.SSE
    assert out[0] == b""
    assert out[1] == first  # unchanged: every byte as it came
    assert out[2].startswith(b"event: message\ndata: ")
    message = orjson.loads(out[2].removeprefix(b"event: message\ndata: "))
    assert message["result"]["content"][0]["text"] == "key [redacted:aws_access_key]"
    assert out[3] == b""


@pytest.mark.parametrize("chunk_size", [64, 700, 4096])
async def test_an_sse_event_over_the_cap_is_an_error_event_and_later_events_are_read(
    pipeline: ResponsePipeline, chunk_size: int
) -> None:
    answer = _open(pipeline)
    big = _sse(_result(AWS + " " + "x" * (2 * LIMIT)))
    after = _sse(_result(f"then {AWS}"))
    stream = big + after
    await answer.on_headers(200, SSE_HEADERS)

    out = b""
    for start in range(0, len(stream), chunk_size):
        out += answer.on_body(stream[start : start + chunk_size], False)
    out += answer.on_body(b"", True)

    events = [event for event in out.split(b"\n\n") if event]
    assert len(events) == 2, out
    _error(events[0], "response_too_large")
    later = orjson.loads(events[1].removeprefix(b"event: message\ndata: "))
    assert later["result"]["content"][0]["text"] == "then [redacted:aws_access_key]"
    assert AWS.encode() not in out
    assert b"xxxx" not in out  # nothing of the dropped event


# --- the end --------------------------------------------------------------------------


async def test_finish_audits_kinds_and_counts_and_no_secret_text(
    pipeline: ResponsePipeline, sink: MemoryAuditSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = _open(pipeline)
    await answer.on_headers(200, SSE_HEADERS)
    answer.on_body(_sse(_result(f"{AWS} {AWS} {EMPLOYEE}")), True)

    await answer.finish()

    [event] = sink.events()
    assert event["decision"] == "answer"
    assert event["decision_id"] == "decision-1"
    assert event["reason"] == "rewritten"
    assert event["target"] == {"upstream": "fininfo", "protocol": "mcp"}
    assert event["answer"] == {"status": 200, "redacted": {"aws_access_key": 2, "employee_id": 1}}
    serialized = json.dumps(event) + b"".join(sink.lines).decode()
    for secret in (AWS, EMPLOYEE):
        assert secret not in serialized
        assert secret not in caplog.text


async def test_a_failed_answer_is_audited_with_its_reason(
    pipeline: ResponsePipeline, sink: MemoryAuditSink
) -> None:
    answer = _open(pipeline)
    await answer.on_headers(200, JSON_HEADERS)
    answer.on_body(b"not json", True)

    await answer.finish()

    [event] = sink.events()
    assert event["reason"] == "response_unreadable"
    assert "redacted" not in event["answer"]
