"""parse_a2a: one A2A operation per request, normalized to the v1.0 name on every binding."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from policy_service.request.a2a import A2A_METHODS, is_agent_card_path, parse_a2a
from policy_service.request.model import A2aBinding, A2aRequest, HttpRequest, Malformed

V1_METHODS = {
    "SendMessage",
    "SendStreamingMessage",
    "GetTask",
    "ListTasks",
    "CancelTask",
    "SubscribeToTask",
    "CreateTaskPushNotificationConfig",
    "GetTaskPushNotificationConfig",
    "ListTaskPushNotificationConfigs",
    "DeleteTaskPushNotificationConfig",
    "GetExtendedAgentCard",
}


def _request(
    method: str = "POST",
    subpath: str = "/",
    *,
    body: Any = None,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    query: str = "",
    path: str | None = None,
    truncated: bool = False,
) -> tuple[HttpRequest, str]:
    payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    request = HttpRequest(
        method=method,
        path=path if path is not None else "/agents/travel" + subpath,
        query=query,
        headers=dict(headers or {}),
        body=payload,
        body_truncated=truncated,
    )
    return request, subpath


def _ok(args: tuple[HttpRequest, str]) -> A2aRequest:
    result = parse_a2a(*args)
    assert isinstance(result, A2aRequest), result
    return result


def _bad(
    args: tuple[HttpRequest, str],
    reason: str,
    code: int = -32600,
    request_id: Any = None,
    status: int = 400,
) -> Malformed:
    result = parse_a2a(*args)
    assert isinstance(result, Malformed), result
    assert (result.reason, result.jsonrpc_code, result.request_id, result.http_status) == (
        reason,
        code,
        request_id,
        status,
    )
    assert type(result.request_id) is type(request_id)
    return result


def _unknown(args: tuple[HttpRequest, str]) -> Malformed:
    return _bad(args, "unknown_a2a_operation", -32601, status=404)


def _rpc(method: Any, id: Any = 1, params: Any = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if id is not None:
        message["id"] = id
    message.update(extra)
    return message


def test_a2a_methods_are_the_v1_names() -> None:
    assert set(A2A_METHODS) == V1_METHODS
    assert isinstance(A2A_METHODS, frozenset)


@pytest.mark.parametrize("subpath", ["/.well-known/agent-card.json", "/.well-known/agent.json"])
def test_agent_card_paths_are_public(subpath: str) -> None:
    assert is_agent_card_path(subpath) is True


@pytest.mark.parametrize(
    "subpath",
    [
        "/",
        "/.well-known/agent-card.json/",
        "/.well-known/AGENT.json",
        "/x/.well-known/agent.json",
        "/.well-known/agent-card.json.bak",
        "/extendedAgentCard",
        "/v1/card",
        "",
    ],
)
def test_other_paths_are_not_agent_card_paths(subpath: str) -> None:
    assert is_agent_card_path(subpath) is False


def test_agent_card_path_is_not_an_operation() -> None:
    _unknown(_request("GET", "/.well-known/agent-card.json"))


# --- JSON-RPC ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("message/send", "SendMessage"),
        ("message/stream", "SendStreamingMessage"),
        ("tasks/get", "GetTask"),
        ("tasks/list", "ListTasks"),
        ("tasks/cancel", "CancelTask"),
        ("tasks/resubscribe", "SubscribeToTask"),
        ("tasks/pushNotificationConfig/set", "CreateTaskPushNotificationConfig"),
        ("tasks/pushNotificationConfig/get", "GetTaskPushNotificationConfig"),
        ("tasks/pushNotificationConfig/list", "ListTaskPushNotificationConfigs"),
        ("tasks/pushNotificationConfig/delete", "DeleteTaskPushNotificationConfig"),
        ("agent/getAuthenticatedExtendedCard", "GetExtendedAgentCard"),
        ("agent/authenticatedExtendedCard", "GetExtendedAgentCard"),
        *((name, name) for name in sorted(V1_METHODS)),
    ],
)
def test_jsonrpc_names_are_normalized_to_v1(name: str, expected: str) -> None:
    result = _ok(_request(body=_rpc(name, id=11)))
    assert result == A2aRequest(expected, A2aBinding.JSONRPC, 11, "0.3")


@pytest.mark.parametrize("name", ["tasks/hack", "Message/Send", "sendMessage", "QuerySkill", "x"])
def test_unknown_jsonrpc_method_is_passed_through(name: str) -> None:
    assert _ok(_request(body=_rpc(name))).method == name


@pytest.mark.parametrize(("given", "expected"), [("abc", "abc"), (0, 0), (None, None)])
def test_jsonrpc_id_is_echoed(given: Any, expected: Any) -> None:
    body = {"jsonrpc": "2.0", "id": given, "method": "message/send", "params": {}}
    assert _ok(_request(body=body)).request_id == expected


def test_jsonrpc_without_id_or_params_is_accepted() -> None:
    result = _ok(_request(body={"jsonrpc": "2.0", "method": "tasks/get"}))
    assert (result.method, result.request_id) == ("GetTask", None)


def test_jsonrpc_is_accepted_on_any_non_rest_subpath() -> None:
    assert _ok(_request(subpath="/a2a/v1", body=_rpc("message/send"))).method == "SendMessage"


def test_jsonrpc_batch_is_not_allowed() -> None:
    _bad(
        _request(body=[_rpc("message/send", id=1), _rpc("tasks/cancel", id=2)]), "batch_not_allowed"
    )
    _bad(_request(body=[]), "batch_not_allowed")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty_body"),
        (b"{", "invalid_json"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":NaN}}', "invalid_json"),
        (b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"tasks/get"}', "invalid_json"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tasks/get","method":"tasks/cancel"}', "duplicate_key"),
        (b'{"jsonrpc":"2.0","id":1,"method":"message/send","params":' + b"[" * 100_000, "too_deep"),
    ],
)
def test_jsonrpc_body_is_parsed_strictly(raw: bytes, reason: str) -> None:
    _bad(_request(raw=raw), reason, -32700)


def test_truncated_jsonrpc_body_fails_closed() -> None:
    _bad(_request(body=_rpc("message/send"), truncated=True), "body_truncated")


@pytest.mark.parametrize(
    ("body", "echo"),
    [
        ({"jsonrpc": "1.0", "id": 3, "method": "message/send"}, 3),
        ({"id": 3, "method": "message/send"}, 3),  # jsonrpc member missing
        ({"jsonrpc": "2.0", "id": 3, "method": 7}, 3),
        ({"jsonrpc": "2.0", "id": 3, "method": ""}, 3),
        ({"jsonrpc": "2.0", "id": "r", "method": "m" * 257}, "r"),
        ({"jsonrpc": "2.0", "id": 3}, 3),  # a response-shaped body: clients do not post those
        ({"jsonrpc": "2.0", "id": 1.5, "method": "message/send"}, None),
        ({"jsonrpc": "2.0", "id": True, "method": "message/send"}, None),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "message/send"}, None),
        ({"jsonrpc": "2.0", "id": [1], "method": "message/send"}, None),
    ],
)
def test_invalid_jsonrpc_requests(body: Any, echo: Any) -> None:
    _bad(_request(body=body), "invalid_jsonrpc", request_id=echo)


@pytest.mark.parametrize("raw", [b'"message/send"', b"1", b"null", b"true"])
def test_non_object_json_body_is_invalid_jsonrpc(raw: bytes) -> None:
    _bad(_request(raw=raw), "invalid_jsonrpc")


@pytest.mark.parametrize("params", [[], ["x"], "x", 1, None])
def test_jsonrpc_params_must_be_an_object(params: Any) -> None:
    body = {"jsonrpc": "2.0", "id": 4, "method": "message/send", "params": params}
    _bad(_request(body=body), "invalid_params", -32602, 4)


def test_json_object_that_is_not_jsonrpc_is_unknown() -> None:
    _unknown(_request(body={"message": {"parts": []}}))


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
def test_non_post_to_a_non_rest_path_is_unknown(method: str) -> None:
    _unknown(_request(method, "/", body=_rpc("message/send")))


# --- REST ----------------------------------------------------------------------------------

REST_CASES = [
    ("POST", "/message:send", "SendMessage"),
    ("POST", "/message:stream", "SendStreamingMessage"),
    ("GET", "/tasks", "ListTasks"),
    ("GET", "/tasks/task-123", "GetTask"),
    ("POST", "/tasks/task-123:cancel", "CancelTask"),
    ("GET", "/tasks/task-123:subscribe", "SubscribeToTask"),
    ("POST", "/tasks/task-123:subscribe", "SubscribeToTask"),
    ("POST", "/tasks/task-123/pushNotificationConfigs", "CreateTaskPushNotificationConfig"),
    ("GET", "/tasks/task-123/pushNotificationConfigs", "ListTaskPushNotificationConfigs"),
    ("GET", "/tasks/task-123/pushNotificationConfigs/cfg-1", "GetTaskPushNotificationConfig"),
    ("DELETE", "/tasks/task-123/pushNotificationConfigs/cfg-1", "DeleteTaskPushNotificationConfig"),
    ("GET", "/extendedAgentCard", "GetExtendedAgentCard"),
]


@pytest.mark.parametrize(("method", "subpath", "expected"), REST_CASES)
def test_rest_v1_paths(method: str, subpath: str, expected: str) -> None:
    assert _ok(_request(method, subpath)) == A2aRequest(expected, A2aBinding.REST, None, "0.3")


@pytest.mark.parametrize(("method", "subpath", "expected"), REST_CASES)
def test_rest_v1_paths_with_a_tenant(method: str, subpath: str, expected: str) -> None:
    assert _ok(_request(method, "/acme" + subpath)).method == expected


@pytest.mark.parametrize(
    ("method", "subpath", "expected"),
    [
        *((m, "/v1" + p, e) for m, p, e in REST_CASES if p != "/extendedAgentCard"),
        ("GET", "/v1/card", "GetExtendedAgentCard"),
    ],
)
def test_rest_v03_paths(method: str, subpath: str, expected: str) -> None:
    assert _ok(_request(method, subpath)).method == expected


@pytest.mark.parametrize(
    ("subpath", "expected"),
    [
        ("/tasks/urn:uuid:1234", "GetTask"),  # colons inside an id are not custom verbs
        ("/tasks/a%20b", "GetTask"),
        ("/tasks/tasks", "GetTask"),  # no-tenant routes first, as the reference router does
        ("/message%3Asend/tasks", "ListTasks"),  # tenant "message:send"
        ("/tasks/x%3Asubscribe", "SubscribeToTask"),  # servers route on the decoded path
    ],
)
def test_rest_path_edge_cases(subpath: str, expected: str) -> None:
    assert _ok(_request("GET", subpath)).method == expected


def test_rest_ignores_the_body_of_operations_that_carry_no_webhook() -> None:
    # The operation is in the path; the body is the agent's to validate.
    result = _ok(_request("POST", "/tasks/t1:cancel", raw=b"{not json", truncated=True))
    assert result.method == "CancelTask"


@pytest.mark.parametrize(
    ("raw", "truncated", "reason"),
    [(b"{not json", False, "invalid_json"), (b'{"message": {}}', True, "body_truncated")],
)
def test_rest_reads_the_body_of_operations_that_may_carry_a_webhook(
    raw: bytes, truncated: bool, reason: str
) -> None:
    # SendMessage's body may name a URL the agent will call: it must be readable.
    result = parse_a2a(*_request("POST", "/message:send", raw=raw, truncated=truncated))
    assert isinstance(result, Malformed)
    assert result.reason == reason


def test_rest_post_with_jsonrpc_body_is_still_the_rest_operation() -> None:
    assert (
        _ok(_request("POST", "/tasks/t1:cancel", body=_rpc("message/send"))).method == "CancelTask"
    )


@pytest.mark.parametrize(
    ("method", "subpath"),
    [
        ("GET", "/message:send"),
        ("PUT", "/tasks"),
        ("DELETE", "/tasks/t1"),
        ("GET", "/tasks/t1:cancel"),  # a cancel path is never GetTask of "t1:cancel"
        ("POST", "/tasks/t1:frobnicate"),
        ("GET", "/tasks/:subscribe"),  # empty id
        ("GET", "/tasks/"),
        ("GET", "//tasks"),
        ("GET", "/tasks//pushNotificationConfigs"),
        ("GET", "/foo"),
        ("GET", "/a/b/tasks"),  # at most one prefix segment
        ("GET", "/t/tasks/x/pushNotificationConfigs/y/z"),
        ("GET", "/tasks/x%2FpushNotificationConfigs"),  # encoded slash: refuse to guess
        ("GET", "/tasks/x%2fpushNotificationConfigs"),
        ("GET", "/card"),
        ("POST", "/v1/card"),
        ("GET", "/skills/s1/query"),
        ("GET", "tasks"),  # not rooted
    ],
)
def test_unrecognized_rest_requests_are_unknown(method: str, subpath: str) -> None:
    _unknown(_request(method, subpath, body={"message": {"parts": []}}))


def test_post_to_a_non_rest_path_is_read_as_jsonrpc() -> None:
    # POST bodies that are not REST operations can only be JSON-RPC: parse errors surface.
    _bad(_request("POST", "/tasks/t1:frobnicate"), "empty_body", -32700)
    assert _ok(_request("POST", "/v1/card", body=_rpc("tasks/get"))).method == "GetTask"


# --- gRPC ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        *((f"/lf.a2a.v1.A2AService/{m}", m) for m in sorted(V1_METHODS)),
        ("/a2a.v1.A2AService/SendMessage", "SendMessage"),
        ("/a2a.v1.A2AService/TaskSubscription", "SubscribeToTask"),
        ("/a2a.v1.A2AService/GetAgentCard", "GetExtendedAgentCard"),
        ("/a2a.v1.A2AService/ListTaskPushNotificationConfig", "ListTaskPushNotificationConfigs"),
        ("/lf.a2a.v1.A2AService/QuerySkill", "QuerySkill"),  # unknown names pass through
    ],
)
def test_grpc_paths(path: str, expected: str) -> None:
    # One empty, uncompressed message: a frame the parser can read for any method.
    empty = b"\x00\x00\x00\x00\x00"
    args = _request("POST", "/", path=path, headers={"content-type": "application/grpc"}, raw=empty)
    assert _ok(args) == A2aRequest(expected, A2aBinding.GRPC, None, "0.3")


@pytest.mark.parametrize(
    "content_type", ["application/grpc+proto", "application/grpc-web", "Application/GRPC"]
)
def test_grpc_content_type_variants(content_type: str) -> None:
    args = _request(path="/lf.a2a.v1.A2AService/GetTask", headers={"content-type": content_type})
    assert _ok(args).binding is A2aBinding.GRPC


def test_grpc_path_is_also_matched_below_a_route_prefix() -> None:
    args = _request(
        subpath="/lf.a2a.v1.A2AService/CancelTask",
        path="/agents/travel/lf.a2a.v1.A2AService/CancelTask",
        headers={"content-type": "application/grpc"},
    )
    assert _ok(args).method == "CancelTask"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/lf.a2a.v1.OtherService/SendMessage"),
        ("POST", "/lf.a2a.v2.A2AService/SendMessage"),
        ("POST", "/lf.a2a.v1.A2AService/SendMessage/extra"),
        ("POST", "/lf.a2a.v1.A2AService/"),
        ("POST", "/lf.a2a.v1.A2AService/Send-Message"),
        ("POST", "/message:send"),  # REST path with a gRPC content type
        ("GET", "/lf.a2a.v1.A2AService/GetTask"),
    ],
)
def test_unrecognized_grpc_requests_are_unknown(method: str, path: str) -> None:
    _unknown(_request(method, path, path=path, headers={"content-type": "application/grpc"}))


def test_grpc_path_without_grpc_content_type_is_not_grpc() -> None:
    args = _request(path="/lf.a2a.v1.A2AService/SendMessage", subpath="/", body=_rpc("tasks/get"))
    assert _ok(args).binding is A2aBinding.JSONRPC


# --- version -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({}, "", "0.3"),
        ({"a2a-version": ""}, "", "0.3"),  # "Agents MUST interpret empty value as 0.3"
        ({"a2a-version": "1.0"}, "", "1.0"),
        ({"a2a-version": "0.3"}, "", "0.3"),
        ({"a2a-version": "1.0.1"}, "", "1.0.1"),
        ({}, "A2A-Version=1.0", "1.0"),
        ({}, "historyLength=2&a2a-version=1.0", "1.0"),
        ({}, "A2A-Version=1.0&A2A-Version=1.0", "1.0"),
        ({}, "A2A-Version=", "0.3"),
        ({"a2a-version": "1.0"}, "A2A-Version=0.3", "1.0"),  # the header wins
    ],
)
def test_version(headers: dict[str, str], query: str, expected: str) -> None:
    assert _ok(_request("GET", "/tasks/t1", headers=headers, query=query)).version == expected


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"a2a-version": "1.0,0.3"}, ""),  # repeated header, joined by Envoy
        ({"a2a-version": "latest"}, ""),
        ({"a2a-version": "v1.0"}, ""),
        ({"a2a-version": "1"}, ""),
        ({"a2a-version": "1.0" + "0" * 100}, ""),
        ({}, "A2A-Version=1.0&A2A-Version=0.3"),
        ({}, "A2A-Version=banana"),
    ],
)
def test_unusable_version_is_rejected_with_the_id(headers: dict[str, str], query: str) -> None:
    args = _request(body=_rpc("message/send", id="v1"), headers=headers, query=query)
    _bad(args, "invalid_a2a_version", -32009, "v1")


def test_version_applies_to_grpc_metadata() -> None:
    args = _request(
        path="/lf.a2a.v1.A2AService/SendMessage",
        headers={"content-type": "application/grpc", "a2a-version": "1.0"},
    )
    assert _ok(args).version == "1.0"


def test_operation_errors_come_before_version_errors() -> None:
    _unknown(_request("GET", "/nope", headers={"a2a-version": "garbage"}))
