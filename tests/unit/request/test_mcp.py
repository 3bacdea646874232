"""parse_mcp: what an MCP Streamable HTTP request calls, and every way it is refused."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest

from policy_service.request.mcp import KNOWN_MCP_VERSIONS, parse_mcp
from policy_service.request.model import CallKind, HttpRequest, JsonRpcCall, Malformed, McpRequest

V2026 = "2026-07-28"


def _msg(method: str | None = "tools/call", params: Any = None, id: Any = 1, **extra: Any) -> Any:
    message: dict[str, Any] = {"jsonrpc": "2.0"}
    if id is not None:
        message["id"] = id
    if method is not None:
        message["method"] = method
    if params is not None:
        message["params"] = params
    message.update(extra)
    return message


def _tool(name: Any = "get_weather", id: Any = 1, **params: Any) -> Any:
    return _msg("tools/call", {"name": name, **params}, id)


def _request(
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    raw: bytes | None = None,
    method: str = "POST",
    truncated: bool = False,
    repeated: frozenset[str] = frozenset(),
) -> HttpRequest:
    payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    return HttpRequest(
        method=method,
        path="/mcp",
        headers=dict(headers or {}),
        repeated_headers=repeated,
        body=payload,
        body_truncated=truncated,
    )


def _ok(request: HttpRequest) -> McpRequest:
    result = parse_mcp(request)
    assert isinstance(result, McpRequest), result
    return result


def _one(request: HttpRequest) -> JsonRpcCall:
    result = _ok(request)
    assert len(result.calls) == 1
    assert result.is_batch is False
    return result.calls[0]


def _bad(
    request: HttpRequest,
    reason: str,
    code: int = -32600,
    request_id: Any = None,
    status: int = 400,
) -> Malformed:
    result = parse_mcp(request)
    assert isinstance(result, Malformed), result
    assert (result.reason, result.jsonrpc_code, result.request_id, result.http_status) == (
        reason,
        code,
        request_id,
        status,
    )
    assert type(result.request_id) is type(request_id)
    return result


def _v2026(method: str, name: str | None = None, **more: str) -> dict[str, str]:
    headers = {"mcp-protocol-version": V2026, "mcp-method": method, **more}
    if name is not None:
        headers["mcp-name"] = name
    return headers


def _sentinel(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


# --- targets -------------------------------------------------------------------------------


def test_tools_call_targets_the_tool_with_its_arguments() -> None:
    request = _request(_tool(arguments={"city": "Oslo"}, id=17), headers={"mcp-session-id": "s1"})
    result = _ok(request)
    assert result.protocol_version == "2025-03-26"  # no header: the spec's assumed version
    assert result.session_id == "s1"
    assert result.first_id == 17
    assert result.calls == (
        JsonRpcCall(CallKind.TOOL, "tools/call", "get_weather", 17, {"city": "Oslo"}),
    )


@pytest.mark.parametrize("arguments", [{}, {"a": {"b": [1, 2]}}])
def test_tools_call_arguments_objects_are_kept(arguments: dict[str, Any]) -> None:
    assert _one(_request(_tool(arguments=arguments))).arguments == arguments


def test_tools_call_without_arguments_or_with_null_arguments_has_none() -> None:
    assert _one(_request(_tool())).arguments is None
    assert _one(_request(_tool(arguments=None))).arguments is None


@pytest.mark.parametrize("arguments", [[1, 2], "x", 3, True])
def test_tools_call_arguments_must_be_an_object(arguments: Any) -> None:
    bad = _bad(_request(_tool(arguments=arguments, id=5)), "invalid_params", -32602, 5)
    assert "params.arguments" in bad.message


@pytest.mark.parametrize(
    "name", [7, ["get_weather"], None, {"name": "x"}, True, "", "n" * 257, "n" * 1_000_000]
)
def test_tools_call_name_must_be_a_string_of_1_to_256_characters(name: Any) -> None:
    bad = _bad(_request(_tool(name=name, id="call-9")), "invalid_params", -32602, "call-9")
    assert "params.name" in bad.message
    assert len(bad.message) < 200


def test_tools_call_name_of_exactly_256_characters_is_accepted() -> None:
    assert _one(_request(_tool(name="n" * 256))).name == "n" * 256


@pytest.mark.parametrize("params", [None, {}, {"arguments": {}}])
def test_tools_call_without_name_is_invalid_params(params: Any) -> None:
    request = _request(_msg("tools/call", params, id=3))
    assert "params.name" in _bad(request, "invalid_params", -32602, 3).message


@pytest.mark.parametrize(
    "method", ["resources/read", "resources/subscribe", "resources/unsubscribe"]
)
def test_resource_methods_target_the_uri(method: str) -> None:
    call = _one(_request(_msg(method, {"uri": "file:///etc/app.conf"})))
    assert (call.kind, call.method, call.name, call.arguments) == (
        CallKind.RESOURCE,
        method,
        "file:///etc/app.conf",
        None,
    )


@pytest.mark.parametrize("uri", [None, 5, ["file:///a"], {"uri": "x"}, "", "u" * 8193])
@pytest.mark.parametrize(
    "method", ["resources/read", "resources/subscribe", "resources/unsubscribe"]
)
def test_resource_uri_is_required_string(method: str, uri: Any) -> None:
    params = {} if uri is None else {"uri": uri}
    bad = _bad(_request(_msg(method, params, id=4)), "invalid_params", -32602, 4)
    assert "params.uri" in bad.message


def test_prompts_get_targets_the_prompt_with_its_arguments() -> None:
    call = _one(_request(_msg("prompts/get", {"name": "summarize", "arguments": {"style": "x"}})))
    assert call == JsonRpcCall(CallKind.PROMPT, "prompts/get", "summarize", 1, {"style": "x"})


@pytest.mark.parametrize("name", [1, None, [], ""])
def test_prompts_get_name_is_validated(name: Any) -> None:
    bad = _bad(_request(_msg("prompts/get", {"name": name}, id=2)), "invalid_params", -32602, 2)
    assert "params.name" in bad.message


def test_prompts_get_arguments_must_be_an_object() -> None:
    request = _request(_msg("prompts/get", {"name": "p", "arguments": ["x"]}, id=2))
    _bad(request, "invalid_params", -32602, 2)


def test_completion_of_a_prompt_targets_that_prompt() -> None:
    params = {
        "ref": {"type": "ref/prompt", "name": "code_review"},
        "argument": {"name": "l", "value": "p"},
    }
    call = _one(_request(_msg("completion/complete", params)))
    assert (call.kind, call.method, call.name) == (
        CallKind.PROMPT,
        "completion/complete",
        "code_review",
    )


def test_completion_of_a_resource_template_targets_that_uri() -> None:
    params = {
        "ref": {"type": "ref/resource", "uri": "file:///{path}"},
        "argument": {"name": "path"},
    }
    call = _one(_request(_msg("completion/complete", params)))
    assert (call.kind, call.name) == (CallKind.RESOURCE, "file:///{path}")


@pytest.mark.parametrize(
    ("ref", "field"),
    [
        (None, "params.ref"),
        ("ref/prompt", "params.ref"),
        ({"type": "ref/tool", "name": "x"}, "params.ref"),
        ({"name": "x"}, "params.ref"),
        ({"type": "ref/prompt"}, "params.ref.name"),
        ({"type": "ref/prompt", "name": 3}, "params.ref.name"),
        ({"type": "ref/resource", "name": "x"}, "params.ref.uri"),
        ({"type": "ref/resource", "uri": ["x"]}, "params.ref.uri"),
    ],
)
def test_completion_ref_must_name_a_prompt_or_resource(ref: Any, field: str) -> None:
    params = {} if ref is None else {"ref": ref}
    bad = _bad(_request(_msg("completion/complete", params, id=8)), "invalid_params", -32602, 8)
    assert field in bad.message


@pytest.mark.parametrize(
    "method",
    ["initialize", "tools/list", "ping", "resources/list", "logging/setLevel", "tasks/get", "x/y"],
)
def test_other_methods_are_method_calls_without_a_name(method: str) -> None:
    assert _one(_request(_msg(method, {"cursor": "c"}, id="r1"))) == JsonRpcCall(
        CallKind.METHOD, method, None, "r1"
    )


def test_notification_has_no_id() -> None:
    call = _one(_request(_msg("notifications/initialized", id=None)))
    assert (call.kind, call.request_id, call.is_notification) == (CallKind.METHOD, None, True)


def test_tools_call_sent_as_notification_is_still_authorized_as_the_tool() -> None:
    call = _one(_request(_tool(name="delete_all", id=None)))
    assert (call.kind, call.name, call.request_id) == (CallKind.TOOL, "delete_all", None)


@pytest.mark.parametrize("payload", [{"result": {}}, {"error": {"code": -1, "message": "no"}}])
def test_client_posted_response_is_a_response_call(payload: dict[str, Any]) -> None:
    call = _one(_request({"jsonrpc": "2.0", "id": "srv-1", **payload}))
    assert call == JsonRpcCall(CallKind.RESPONSE, None, None, "srv-1")
    assert call.is_notification is False


# --- JSON-RPC shape ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "echo"),
    [
        ({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}, 1),  # both
        ({"jsonrpc": "2.0", "id": 1}, 1),  # neither method nor result
        ({"jsonrpc": "2.0", "result": {}}, None),  # response without id
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "result": {}}, 1),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "error": {}}, 1),
        ({"id": 1, "method": "ping"}, 1),  # no jsonrpc
        ({"jsonrpc": "1.0", "id": 2, "method": "ping"}, 2),
        ({"jsonrpc": 2.0, "id": 3, "method": "ping"}, 3),
        ({"jsonrpc": "2.0", "id": 4, "method": 5}, 4),
        ({"jsonrpc": "2.0", "id": 4, "method": None}, 4),
        ({"jsonrpc": "2.0", "id": 4, "method": ""}, 4),
        ({"jsonrpc": "2.0", "id": 4, "method": "m" * 257}, 4),
    ],
)
def test_invalid_jsonrpc_messages(message: Any, echo: Any) -> None:
    _bad(_request(message), "invalid_jsonrpc", request_id=echo)


@pytest.mark.parametrize("bad_id", [None, True, False, 1.5, 1.0, [1], {"a": 1}])
def test_id_must_be_string_or_integer_never_null(bad_id: Any) -> None:
    message = {"jsonrpc": "2.0", "id": bad_id, "method": "tools/list"}
    _bad(_request(message), "invalid_jsonrpc")


@pytest.mark.parametrize("params", [[], ["get_weather"], "x", 1, None])
def test_params_must_be_an_object(params: Any) -> None:
    message = {"jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": params}
    _bad(_request(message), "invalid_params", -32602, 6)


@pytest.mark.parametrize("raw", [b'"tools/call"', b"42", b"true", b"null"])
def test_body_must_be_an_object_or_batch(raw: bytes) -> None:
    _bad(_request(raw=raw), "invalid_jsonrpc")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty_body"),
        (b"  \n", "empty_body"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call"', "invalid_json"),
        (b'\xef\xbb\xbf{"jsonrpc": "2.0", "id": 1, "method": "ping"}', "invalid_json"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": NaN}}', "invalid_json"),
        # The canonical attack: authorize one name, execute the other.
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
            b'"params":{"name":"get_weather","name":"delete_all"}}',
            "duplicate_key",
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}', "duplicate_key"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":'
            + b'{"a":' * 100_000,
            "too_deep",
        ),
    ],
)
def test_body_parse_errors_are_passed_through(raw: bytes, reason: str) -> None:
    _bad(_request(raw=raw), reason, -32700)


def test_deeply_nested_arguments_are_too_deep() -> None:
    arguments: Any = "leaf"
    for _ in range(100):
        arguments = {"a": arguments}
    _bad(_request(_tool(arguments=arguments)), "too_deep", -32700)


def test_truncated_body_fails_closed() -> None:
    request = _request(_tool(name="get_weather", id=1), truncated=True)
    bad = _bad(request, "body_truncated")
    assert "truncated" in bad.message


# --- HTTP methods --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE", "get"])
def test_get_and_delete_have_no_calls(method: str) -> None:
    result = _ok(_request(method=method, headers={"mcp-session-id": "abc"}))
    assert (result.calls, result.is_batch, result.session_id, result.first_id) == (
        (),
        False,
        "abc",
        None,
    )
    assert result.protocol_version == "2025-03-26"


def test_get_reports_the_header_version() -> None:
    assert (
        _ok(_request(method="GET", headers={"mcp-protocol-version": "2025-06-18"})).protocol_version
        == "2025-06-18"
    )


def test_get_with_unknown_version_is_rejected() -> None:
    _bad(
        _request(method="GET", headers={"mcp-protocol-version": "1999-01-01"}),
        "unknown_protocol_version",
    )


@pytest.mark.parametrize("method", ["PUT", "PATCH", "HEAD", "OPTIONS"])
def test_other_http_methods_are_not_allowed(method: str) -> None:
    _bad(_request(_tool(), method=method), "method_not_allowed", status=405)


def test_empty_session_header_is_no_session() -> None:
    assert _ok(_request(_tool(), headers={"mcp-session-id": ""})).session_id is None
    assert _ok(_request(_tool())).session_id is None


# --- protocol version ----------------------------------------------------------------------


@pytest.mark.parametrize("version", [v for v in KNOWN_MCP_VERSIONS if v < V2026])
def test_known_version_header_is_reported(version: str) -> None:
    result = _ok(_request(_msg("tools/list"), headers={"mcp-protocol-version": version}))
    assert result.protocol_version == version


def test_known_versions_constant() -> None:
    assert KNOWN_MCP_VERSIONS == (
        "2024-11-05",
        "2025-03-26",
        "2025-06-18",
        "2025-11-25",
        "2026-07-28",
    )


@pytest.mark.parametrize(
    "version", ["2025-01-01", "", "latest", "2025-06-18,2025-06-18", "2025-06-18 "]
)
def test_unknown_version_header_is_rejected_with_the_supported_list(version: str) -> None:
    request = _request(_tool(id=12), headers={"mcp-protocol-version": version})
    bad = _bad(request, "unknown_protocol_version", request_id=12)
    assert all(known in bad.message for known in KNOWN_MCP_VERSIONS)


def test_unknown_version_with_unparseable_body_has_no_id() -> None:
    request = _request(raw=b"{nope", headers={"mcp-protocol-version": "x"})
    _bad(request, "unknown_protocol_version")


@pytest.mark.parametrize("proposed", ["2025-06-18", "2024-11-05", "2099-01-01"])
def test_initialize_without_header_reports_the_proposed_version(proposed: str) -> None:
    body = _msg("initialize", {"protocolVersion": proposed, "capabilities": {}})
    result = _ok(_request(body))
    assert result.protocol_version == proposed
    assert result.calls[0].kind is CallKind.METHOD


@pytest.mark.parametrize("proposed", [None, 20250618, "", "v" * 65])
def test_initialize_with_unusable_version_falls_back_to_the_default(proposed: Any) -> None:
    params = {} if proposed is None else {"protocolVersion": proposed}
    assert _ok(_request(_msg("initialize", params))).protocol_version == "2025-03-26"


def test_version_header_wins_over_initialize_params() -> None:
    body = _msg("initialize", {"protocolVersion": "2025-11-25"})
    assert (
        _ok(_request(body, headers={"mcp-protocol-version": "2025-06-18"})).protocol_version
        == "2025-06-18"
    )


# --- batches -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"mcp-protocol-version": "2025-03-26"}, {"mcp-protocol-version": "2024-11-05"}]
)
def test_batch_is_allowed_before_2025_06_18_and_every_element_is_returned(
    headers: dict[str, str],
) -> None:
    batch = [
        _tool("get_weather", id=1),
        _tool("delete_all", id=2),
        _msg("notifications/progress", {"progressToken": 1}, id=None),
        _msg("resources/read", {"uri": "file:///x"}, id="3"),
    ]
    result = _ok(_request(batch, headers=headers))
    assert result.is_batch is True
    assert result.first_id == 1
    assert [(c.kind, c.name, c.request_id) for c in result.calls] == [
        (CallKind.TOOL, "get_weather", 1),
        (CallKind.TOOL, "delete_all", 2),
        (CallKind.METHOD, None, None),
        (CallKind.RESOURCE, "file:///x", "3"),
    ]


def test_batch_of_responses_is_allowed_in_2025_03_26() -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "result": {}}, {"jsonrpc": "2.0", "id": 2, "error": {}}]
    result = _ok(_request(batch))
    assert [c.kind for c in result.calls] == [CallKind.RESPONSE, CallKind.RESPONSE]


def test_single_element_batch_is_still_a_batch() -> None:
    assert _ok(_request([_tool()])).is_batch is True


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25", V2026])
def test_batch_is_rejected_from_2025_06_18_on(version: str) -> None:
    headers = {"mcp-protocol-version": version, "mcp-method": "tools/call", "mcp-name": "t"}
    bad = _bad(_request([_tool("t", id=1)], headers=headers), "batch_not_allowed")
    assert version in bad.message


def test_empty_batch_is_rejected() -> None:
    _bad(_request([]), "empty_batch")


def test_one_bad_batch_element_rejects_the_batch_and_echoes_its_id() -> None:
    batch = [_tool("ok", id=1), _tool(7, id=2), _tool("also_ok", id=3)]
    _bad(_request(batch), "invalid_params", -32602, 2)


@pytest.mark.parametrize("element", [1, "x", None, [], [_msg("ping")]])
def test_batch_elements_must_be_objects(element: Any) -> None:
    _bad(_request([_tool(id=1), element]), "invalid_jsonrpc")


def test_duplicate_key_inside_any_batch_element_rejects_the_batch() -> None:
    raw = (
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"},'
        b'{"jsonrpc":"2.0","id":2,"id":3,"method":"ping"}]'
    )
    _bad(_request(raw=raw), "duplicate_key", -32700)


# --- mirrored headers (2026-07-28) ---------------------------------------------------------


def _tool_2026(name: str = "get_weather", *, meta_version: Any = V2026, id: Any = 1) -> Any:
    params: dict[str, Any] = {"name": name, "arguments": {}}
    if meta_version is not None:
        params["_meta"] = {"io.modelcontextprotocol/protocolVersion": meta_version}
    return _msg("tools/call", params, id)


def test_2026_request_with_matching_headers_is_accepted() -> None:
    result = _ok(_request(_tool_2026(), headers=_v2026("tools/call", "get_weather")))
    assert result.protocol_version == V2026
    assert result.calls[0].name == "get_weather"


@pytest.mark.parametrize(
    ("message", "method", "name"),
    [
        (
            _msg("resources/read", {"uri": "file:///p/config.json"}),
            "resources/read",
            "file:///p/config.json",
        ),
        (_msg("prompts/get", {"name": "summarize"}), "prompts/get", "summarize"),
        (_msg("tools/list"), "tools/list", None),
        (_msg("server/discover"), "server/discover", None),
    ],
)
def test_2026_other_methods_with_matching_headers(
    message: Any, method: str, name: str | None
) -> None:
    assert _ok(_request(message, headers=_v2026(method, name))).calls[0].method == method


def test_2026_missing_mcp_method_is_rejected() -> None:
    headers = {"mcp-protocol-version": V2026, "mcp-name": "get_weather"}
    bad = _bad(_request(_tool_2026(id=21), headers=headers), "missing_mcp_header", -32020, 21)
    assert "Mcp-Method" in bad.message


@pytest.mark.parametrize(
    "message",
    [
        _tool_2026(id=22),
        _msg("resources/read", {"uri": "file:///x"}, id=22),
        _msg("prompts/get", {"name": "p"}, id=22),
    ],
)
def test_2026_missing_mcp_name_is_rejected_where_required(message: Any) -> None:
    headers = _v2026(message["method"])
    bad = _bad(_request(message, headers=headers), "missing_mcp_header", -32020, 22)
    assert "Mcp-Name" in bad.message


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("resources/subscribe", {"uri": "file:///x"}),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": "p"}}),
        ("tools/list", {}),
    ],
)
def test_2026_mcp_name_not_required_for_other_methods(method: str, params: Any) -> None:
    _ok(_request(_msg(method, params), headers=_v2026(method)))


def test_2026_response_without_mcp_method_is_rejected() -> None:
    # Clients "MUST NOT send JSON-RPC responses" in 2026-07-28; no method to mirror either.
    request = _request(
        {"jsonrpc": "2.0", "id": 9, "result": {}}, headers={"mcp-protocol-version": V2026}
    )
    _bad(request, "missing_mcp_header", -32020, 9)


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        (_v2026("tools/list", "get_weather"), "Mcp-Method"),
        (_v2026("Tools/Call", "get_weather"), "Mcp-Method"),  # values are case-sensitive
        (_v2026(_sentinel("tools/call"), "get_weather"), "Mcp-Method"),  # no sentinel for method
        (_v2026("tools/call", "harmless_tool"), "Mcp-Name"),
        (_v2026("tools/call", "Get_Weather"), "Mcp-Name"),
        (_v2026("tools/call", ""), "Mcp-Name"),
        (_v2026("tools/call", _sentinel("harmless_tool")), "Mcp-Name"),
        (_v2026("tools/call", "=?base64?not base64!?="), "Mcp-Name"),
        (
            _v2026("tools/call", "=?base64?" + base64.b64encode(b"\xff\xfe").decode() + "?="),
            "Mcp-Name",
        ),
        (
            _v2026("tools/call", "=?BASE64?" + base64.b64encode(b"get_weather").decode() + "?="),
            "Mcp-Name",
        ),
    ],
)
def test_2026_header_body_mismatch_is_rejected(headers: dict[str, str], what: str) -> None:
    bad = _bad(_request(_tool_2026(id="m1"), headers=headers), "header_mismatch", -32020, "m1")
    assert what in bad.message


@pytest.mark.parametrize(
    "name", ["get_weather", "Hello, \u4e16\u754c", " padded ", "line1\nline2", "=?base64?literal?="]
)
def test_base64_sentinel_is_decoded_before_comparing(name: str) -> None:
    result = _ok(_request(_tool_2026(name), headers=_v2026("tools/call", _sentinel(name))))
    assert result.calls[0].name == name


def test_resource_uri_is_compared_with_mcp_name() -> None:
    message = _msg("resources/read", {"uri": "file:///a"}, id=5)
    _bad(
        _request(message, headers=_v2026("resources/read", "file:///b")),
        "header_mismatch",
        -32020,
        5,
    )


def test_mcp_name_on_a_method_without_a_name_is_a_mismatch() -> None:
    _bad(
        _request(_msg("tools/list", id=5), headers=_v2026("tools/list", "x")),
        "header_mismatch",
        -32020,
        5,
    )


@pytest.mark.parametrize("meta_version", ["2025-11-25", "", 20260728, None])
def test_2026_meta_protocol_version_must_match_the_header(meta_version: Any) -> None:
    message = _tool_2026(id=30)
    message["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = meta_version
    bad = _bad(
        _request(message, headers=_v2026("tools/call", "get_weather")),
        "header_mismatch",
        -32020,
        30,
    )
    assert "MCP-Protocol-Version" in bad.message


def test_2026_body_without_meta_version_is_not_compared() -> None:
    _ok(_request(_tool_2026(meta_version=None), headers=_v2026("tools/call", "get_weather")))


def test_meta_version_is_checked_against_older_version_headers_too() -> None:
    message = _tool_2026(meta_version=V2026, id=31)
    request = _request(message, headers={"mcp-protocol-version": "2025-06-18"})
    _bad(request, "header_mismatch", -32020, 31)


@pytest.mark.parametrize("header", ["mcp-method", "mcp-name"])
def test_repeated_mirrored_header_is_rejected(header: str) -> None:
    request = _request(
        _tool_2026(id=40), headers=_v2026("tools/call", "get_weather"), repeated=frozenset({header})
    )
    _bad(request, "header_mismatch", -32020, 40)


@pytest.mark.parametrize("version", [None, "2025-03-26", "2025-06-18", "2025-11-25"])
def test_before_2026_mirrored_headers_are_optional(version: str | None) -> None:
    headers = {} if version is None else {"mcp-protocol-version": version}
    assert _one(_request(_tool(), headers=headers)).name == "get_weather"


@pytest.mark.parametrize("version", [None, "2025-06-18"])
@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("mcp-method", "tools/list"),
        ("mcp-name", "harmless_tool"),
        ("mcp-name", _sentinel("harmless_tool")),
    ],
)
def test_before_2026_present_headers_must_still_match(
    version: str | None, header: str, value: str
) -> None:
    headers = {header: value}
    if version is not None:
        headers["mcp-protocol-version"] = version
    _bad(_request(_tool(id=50), headers=headers), "header_mismatch", -32020, 50)


def test_before_2026_present_matching_headers_are_accepted() -> None:
    headers = {"mcp-method": "tools/call", "mcp-name": _sentinel("get_weather")}
    assert _one(_request(_tool(), headers=headers)).name == "get_weather"


def test_initialize_proposing_2026_without_header_does_not_require_mirrored_headers() -> None:
    result = _ok(_request(_msg("initialize", {"protocolVersion": V2026})))
    assert result.protocol_version == V2026


def test_present_headers_must_match_every_batch_element() -> None:
    batch = [_tool("get_weather", id=1), _tool("delete_all", id=2)]
    request = _request(batch, headers={"mcp-method": "tools/call", "mcp-name": "get_weather"})
    _bad(request, "header_mismatch", -32020, 2)
