"""One answer's JSON-RPC messages rewritten by the plan: which messages are touched, and
what a filtered list keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policy_service.identity.principal import CredentialKind, Principal
from policy_service.policy.model import UpstreamPolicy
from policy_service.responses.answers import AnswerRewriter
from policy_service.responses.plan import PlannedCall, ResponsePlan
from tests.support.bundles import write_test_bundle

READER = Principal("alice", "test-idp", "app", frozenset({"fininfo:read"}), CredentialKind.JWT)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> UpstreamPolicy:
    directory: Path = tmp_path_factory.mktemp("answers")
    return write_test_bundle(directory).bundle.by_name["fininfo"]


def rewriter(upstream: UpstreamPolicy, *calls: PlannedCall) -> AnswerRewriter:
    return AnswerRewriter(upstream, ResponsePlan("fininfo", "d", calls, principal=READER))


def tools(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "inputSchema": {"type": "object"}} for name in names]


def listed(message: dict[str, Any] | None) -> list[str]:
    assert message is not None
    return [tool["name"] for tool in message["result"]["tools"]]


def test_a_page_is_filtered_and_keeps_its_cursor(upstream: UpstreamPolicy) -> None:
    answer = rewriter(upstream, PlannedCall(3, "tools/list"))
    page = {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {"tools": tools("place_trade", "get_quote"), "nextCursor": "opaque=="},
    }
    rewritten = answer.message(page)
    assert listed(rewritten) == ["get_quote"]
    assert rewritten is not None
    assert rewritten["result"]["nextCursor"] == "opaque=="
    assert answer.report.hidden["tools/list"] == 1


def test_an_empty_page_with_a_cursor_stays_valid(upstream: UpstreamPolicy) -> None:
    answer = rewriter(upstream, PlannedCall(1, "tools/list"))
    page = {"jsonrpc": "2.0", "id": 1, "result": {"tools": tools("place_trade"), "nextCursor": "c"}}
    rewritten = answer.message(page)
    assert rewritten is not None
    assert rewritten["result"] == {"tools": [], "nextCursor": "c"}


def test_a_cacheable_list_becomes_private(upstream: UpstreamPolicy) -> None:
    answer = rewriter(upstream, PlannedCall(1, "tools/list"))
    page = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"tools": tools("get_quote"), "ttlMs": 60000, "cacheScope": "public"},
    }
    rewritten = answer.message(page)
    assert rewritten is not None
    assert rewritten["result"]["cacheScope"] == "private"


@pytest.mark.parametrize(
    "message",
    [
        # An answer to a call the plan does not know: another request's, or a string id.
        {"jsonrpc": "2.0", "id": 9, "result": {"tools": tools("place_trade")}},
        {"jsonrpc": "2.0", "id": "1", "result": {"tools": tools("place_trade")}},
        # A request or a notification from the server on the same stream.
        {"jsonrpc": "2.0", "id": 1, "method": "sampling/createMessage", "params": {}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
        # An error answer: nothing to filter.
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "x"}},
    ],
)
def test_messages_the_plan_does_not_cover_pass_untouched(
    upstream: UpstreamPolicy, message: dict[str, Any]
) -> None:
    assert rewriter(upstream, PlannedCall(1, "tools/list")).message(message) is None


def test_a_batch_answer_is_filtered_element_by_element(upstream: UpstreamPolicy) -> None:
    answer = rewriter(upstream, PlannedCall(1, "tools/list"), PlannedCall(2, "prompts/list"))
    batch = [
        {"jsonrpc": "2.0", "id": 2, "result": {"prompts": [{"name": "summarize_position"}]}},
        {"jsonrpc": "2.0", "id": 1, "result": {"tools": tools("place_trade", "list_symbols")}},
        {"jsonrpc": "2.0", "id": 5, "result": {}},
    ]
    rewritten = answer.document(batch)
    assert isinstance(rewritten, list)
    assert rewritten[0]["result"]["prompts"] == [{"name": "summarize_position"}]
    assert listed(rewritten[1]) == ["list_symbols"]
    assert rewritten[2] is batch[2]


def test_resources_are_filtered_by_uri(upstream: UpstreamPolicy) -> None:
    answer = rewriter(upstream, PlannedCall(1, "resources/list"))
    page = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"resources": [{"uri": "fin://symbols"}, {"uri": "file:///etc/passwd"}]},
    }
    rewritten = answer.message(page)
    assert rewritten is not None
    assert rewritten["result"]["resources"] == [{"uri": "fin://symbols"}]
