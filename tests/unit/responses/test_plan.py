"""Which answers the check marks for the response side, and the plan's round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_service.identity.principal import CredentialKind, Principal
from policy_service.policy.model import UpstreamPolicy
from policy_service.request.model import CallKind, JsonRpcCall, McpRequest
from policy_service.responses.plan import ResponsePlan, SessionWork, plan_response
from tests.support.bundles import write_test_bundle

ALICE = Principal(
    "alice",
    "test-idp",
    "app",
    frozenset({"fininfo:read"}),
    CredentialKind.JWT,
    claims={"iss": "https://idp", "level": 3, "big": 2**63},
)


def _upstream(tmp: Path, responses: str = "") -> UpstreamPolicy:
    return write_test_bundle(tmp, fininfo_responses=responses).bundle.by_name["fininfo"]


def _request(*methods: str, session: str | None = None) -> McpRequest:
    calls = tuple(
        JsonRpcCall(
            CallKind.TOOL if method == "tools/call" else CallKind.METHOD,
            method,
            "get_quote" if method == "tools/call" else None,
            index + 1,
        )
        for index, method in enumerate(methods)
    )
    return McpRequest("2025-06-18", calls, session_id=session)


def test_a_plain_tool_call_is_not_marked(tmp_path: Path) -> None:
    upstream = _upstream(tmp_path)
    plan = plan_response(upstream.responses, "fininfo", "POST", _request("tools/call"), ALICE, "d")
    assert plan is None


def test_lists_are_marked_with_the_principal_for_filtering(tmp_path: Path) -> None:
    upstream = _upstream(tmp_path)
    plan = plan_response(upstream.responses, "fininfo", "POST", _request("tools/list"), ALICE, "d")
    assert plan is not None
    assert [call.method for call in plan.calls] == ["tools/list"]
    assert plan.principal == ALICE


def test_lists_are_not_marked_when_filtering_is_off(tmp_path: Path) -> None:
    upstream = _upstream(tmp_path, "      filter_lists: false\n")
    plan = plan_response(upstream.responses, "fininfo", "POST", _request("tools/list"), ALICE, "d")
    assert plan is None


def test_a_redacted_tool_call_is_marked_without_anyones_identity(tmp_path: Path) -> None:
    upstream = _upstream(tmp_path, "      redact: {}\n")
    plan = plan_response(upstream.responses, "fininfo", "POST", _request("tools/call"), ALICE, "d")
    assert plan is not None
    assert plan.principal is None


def test_sessions_are_bound_on_initialize_and_ended_on_delete(tmp_path: Path) -> None:
    upstream = _upstream(tmp_path, "      sessions: {bind: true}\n")
    opened = plan_response(
        upstream.responses, "fininfo", "POST", _request("initialize"), ALICE, "d"
    )
    assert opened is not None
    assert opened.session is SessionWork.BIND
    assert opened.principal == ALICE
    ended = plan_response(
        upstream.responses, "fininfo", "DELETE", _request(session="s-1"), ALICE, "d"
    )
    assert ended is not None
    assert (ended.session, ended.session_id) == (SessionWork.END, "s-1")


def test_notifications_are_never_marked(tmp_path: Path) -> None:
    upstream = _upstream(tmp_path)
    notification = McpRequest(
        "2025-06-18", (JsonRpcCall(CallKind.METHOD, "tools/list", None, None),)
    )
    assert plan_response(upstream.responses, "fininfo", "POST", notification, ALICE, "d") is None


def test_the_plan_survives_its_trip_through_envoy_exactly(tmp_path: Path) -> None:
    upstream = _upstream(tmp_path)
    plan = plan_response(
        upstream.responses, "fininfo", "POST", _request("tools/list", "prompts/list"), ALICE, "d"
    )
    assert plan is not None
    again = ResponsePlan.from_metadata(plan.to_metadata()["response_plan"])
    assert again == plan
    assert again.principal is not None
    # Integer claims stay integers (a protobuf Struct would make them doubles).
    assert again.principal.claims["big"] == 2**63
    assert again.call_for(2) is not None
    assert again.call_for("2") is None  # a string id is not the number id


@pytest.mark.parametrize("text", ["[]", '{"upstream": "x"}', "not json", '{"calls": 3}'])
def test_a_plan_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="plan"):
        ResponsePlan.from_metadata(text)
