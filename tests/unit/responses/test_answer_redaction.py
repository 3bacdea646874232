"""Redaction in every message of a tool call's answer: its result, its error, and what the
server sends before it (progress, log messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policy_service.policy.model import UpstreamPolicy
from policy_service.responses.answers import AnswerRewriter
from policy_service.responses.plan import PlannedCall, ResponsePlan
from tests.support.bundles import write_test_bundle

AWS = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example key id, split for scanners
CALL = PlannedCall(3, "tools/call", "get_account_notes")


@pytest.fixture
def fininfo(tmp_path: Path) -> UpstreamPolicy:
    bundle = write_test_bundle(tmp_path, fininfo_responses="      redact: {}\n").bundle
    return bundle.by_name["fininfo"]


def _rewriter(upstream: UpstreamPolicy, *calls: PlannedCall) -> AnswerRewriter:
    return AnswerRewriter(upstream, ResponsePlan("fininfo", "decision-1", calls))


def _log(data: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": data}}


def test_a_tool_result_is_redacted(fininfo: UpstreamPolicy) -> None:
    rewriter = _rewriter(fininfo, CALL)
    message = {"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": AWS}]}}

    rewritten = rewriter.message(message)

    assert rewritten is not None
    assert rewritten["result"]["content"][0]["text"] == "[redacted:aws_access_key]"
    assert dict(rewriter.report.redacted) == {"aws_access_key": 1}
    assert rewriter.report.rewritten == 1


def test_a_tool_error_is_redacted(fininfo: UpstreamPolicy) -> None:
    rewriter = _rewriter(fininfo, CALL)
    message = {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32000, "message": f"bad key {AWS}", "data": {"key": AWS}},
    }

    rewritten = rewriter.message(message)

    assert rewritten == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {
            "code": -32000,
            "message": "bad key [redacted:aws_access_key]",
            "data": {"key": "[redacted:aws_access_key]"},
        },
    }
    assert dict(rewriter.report.redacted) == {"aws_access_key": 2}


def test_what_the_server_sends_during_a_tool_call_is_redacted(fininfo: UpstreamPolicy) -> None:
    rewriter = _rewriter(fininfo, CALL)
    progress = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": 1, "progress": 1, "message": f"read {AWS}"},
    }

    assert rewriter.message(_log(f"using {AWS}")) == _log("using [redacted:aws_access_key]")
    rewritten = rewriter.message(progress)

    assert rewritten is not None
    assert rewritten["params"]["message"] == "read [redacted:aws_access_key]"
    assert dict(rewriter.report.redacted) == {"aws_access_key": 2}


def test_messages_without_secrets_and_other_answers_are_left_alone(
    fininfo: UpstreamPolicy,
) -> None:
    rewriter = _rewriter(fininfo, CALL)
    other_id = {"jsonrpc": "2.0", "id": 4, "result": {"content": [{"type": "text", "text": AWS}]}}

    assert rewriter.message(_log("nothing secret")) is None
    assert rewriter.message(other_id) is None  # not a planned call: not this plan's to touch
    assert rewriter.report.rewritten == 0
    assert not rewriter.report.redacted


def test_a_list_answer_does_not_redact_server_messages(fininfo: UpstreamPolicy) -> None:
    rewriter = _rewriter(fininfo, PlannedCall(3, "tools/list"))

    assert rewriter.message(_log(AWS)) is None
