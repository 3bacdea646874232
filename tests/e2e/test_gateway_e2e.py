"""Through a real Envoy, with the real MCP and A2A SDK clients and servers."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.support.bundles import CI_BOT_KEY, HELPER_RESOURCE, ISSUER
from tests.support.peers import (
    GatewayDenied,
    RpcError,
    a2a_fetch_card,
    a2a_send_message,
    mcp_call_tool,
    mcp_list_tools,
    tool_text,
)

pytestmark = pytest.mark.e2e

MCP_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2025-06-18",
}


def audience(stack: Stack, path: str) -> str:
    return f"{stack.url}{path}"


async def raw_post(
    stack: Stack,
    body: bytes | dict[str, object],
    headers: dict[str, str] | list[tuple[str, str]],
    path: str = "/fininfo/mcp",
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra = list(headers.items()) if isinstance(headers, dict) else headers
    names = {name for name, _ in extra}
    merged = [(k, v) for k, v in MCP_HEADERS.items() if k not in names] + extra
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{stack.url}{path}", content=content, headers=merged)


def unsigned_token(stack: Stack) -> str:
    def segment(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {
        "iss": ISSUER,
        "sub": "mallory",
        "aud": stack.fininfo_url,
        "scope": "fininfo:read fininfo:trade",
        "exp": 4102444800,
    }
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims)}."


TRADE = {"symbol": "ACME", "side": "buy", "quantity": 1}

TOOL_CALL = {
    "jsonrpc": "2.0",
    "id": 11,
    "method": "tools/call",
    "params": {"name": "get_quote", "arguments": {"symbol": "ACME"}},
}


async def test_allowed_tool_call_returns_its_result(stack: Stack) -> None:
    headers = stack.bearer("fininfo:read", audience=stack.fininfo_url)
    result = await mcp_call_tool(
        stack.fininfo_url, "get_quote", {"symbol": "ACME"}, headers=headers
    )
    assert not result.is_error
    assert "ACME" in tool_text(result)
    # The list shows this caller only what it may call: no place_trade without the
    # trade scope (the response side filters it).
    tools = await mcp_list_tools(stack.fininfo_url, headers=headers)
    assert {tool.name for tool in tools} == {"get_quote", "list_symbols"}
    trader = stack.bearer("fininfo:read", "fininfo:trade", audience=stack.fininfo_url)
    tools = await mcp_list_tools(stack.fininfo_url, headers=trader)
    assert {"get_quote", "list_symbols", "place_trade"} <= {tool.name for tool in tools}


async def test_legacy_initialize_handshake_also_works(stack: Stack) -> None:
    headers = stack.bearer("fininfo:read", audience=stack.fininfo_url)
    result = await mcp_call_tool(
        stack.fininfo_url, "list_symbols", {}, headers=headers, mode="legacy"
    )
    assert not result.is_error


async def test_tool_outside_the_tokens_scopes_is_denied_with_a_clear_error(stack: Stack) -> None:
    headers = stack.bearer("fininfo:read", audience=stack.fininfo_url)
    with pytest.raises(GatewayDenied) as denied:
        await mcp_call_tool(
            stack.fininfo_url,
            "place_trade",
            TRADE,
            headers=headers,
        )
    assert denied.value.status == 403
    assert denied.value.headers["www-authenticate"].startswith(
        'Bearer error="insufficient_scope", scope="fininfo:trade"'
    )
    error = denied.value.rpc_error
    assert error is not None
    assert error["data"]["reason"] == "insufficient_scope"
    assert error["data"]["scopes"] == ["fininfo:trade"]


async def test_jsonrpc_denial_style_reaches_the_client_in_band(jsonrpc_stack: Stack) -> None:
    headers = jsonrpc_stack.bearer("fininfo:read", audience=jsonrpc_stack.fininfo_url)
    with pytest.raises(RpcError) as denied:
        await mcp_call_tool(
            jsonrpc_stack.fininfo_url,
            "place_trade",
            TRADE,
            headers=headers,
        )
    assert denied.value.code == 403
    assert denied.value.data["scopes"] == ["fininfo:trade"]
    # The session survives: the next allowed call on a fresh client works.
    result = await mcp_call_tool(
        jsonrpc_stack.fininfo_url, "get_quote", {"symbol": "ACME"}, headers=headers
    )
    assert not result.is_error


@pytest.mark.parametrize(
    ("case", "expected_challenge"),
    [
        ("missing", 'Bearer resource_metadata="'),
        ("expired", 'Bearer error="invalid_token", error_description="token_expired"'),
        ("wrong-audience", 'Bearer error="invalid_token", error_description="wrong_audience"'),
    ],
)
async def test_bad_or_missing_tokens_get_401_with_the_challenge(
    stack: Stack, case: str, expected_challenge: str
) -> None:
    if case == "missing":
        headers: dict[str, str] = {}
    elif case == "expired":
        headers = stack.bearer("fininfo:read", audience=stack.fininfo_url, lifetime=-600)
    else:
        headers = stack.bearer("fininfo:read", audience="https://elsewhere.example/mcp")
    with pytest.raises(GatewayDenied) as denied:
        await mcp_call_tool(stack.fininfo_url, "get_quote", {"symbol": "ACME"}, headers=headers)
    assert denied.value.status == 401
    challenge = denied.value.headers["www-authenticate"]
    assert challenge.startswith(expected_challenge)
    metadata_url = f"{stack.url}/.well-known/oauth-protected-resource/fininfo/mcp"
    assert f'resource_metadata="{metadata_url}"' in challenge
    # The metadata document the challenge points at is reachable without a token.
    async with httpx.AsyncClient(timeout=10) as client:
        document = await client.get(metadata_url)
    assert document.status_code == 200
    assert document.json()["resource"] == stack.fininfo_url


async def test_upstream_never_sees_the_client_token_or_spoofed_identity(stack: Stack) -> None:
    token_headers = stack.bearer("fininfo:read", audience=stack.fininfo_url, subject="alice")
    spoofed = {**token_headers, "x-gateway-subject": "mallory", "x-gateway-role": "admin"}
    recorder = stack.peers.fininfo.recorder
    recorder.clear()
    result = await mcp_call_tool(
        stack.fininfo_url, "get_quote", {"symbol": "ACME"}, headers=spoofed
    )
    assert not result.is_error
    seen = recorder.entries()
    assert seen, "the upstream recorded no request"
    for entry in seen:
        headers = entry["headers"]
        assert "authorization" not in headers
        assert headers["x-gateway-subject"] == "alice"
        assert "x-gateway-role" not in headers
        assert headers["x-gateway-scopes"] == "fininfo:read"


async def test_api_key_reaches_the_tool_and_is_stripped(stack: Stack) -> None:
    recorder = stack.peers.fininfo.recorder
    recorder.clear()
    result = await mcp_call_tool(
        stack.fininfo_url, "get_quote", {"symbol": "ACME"}, headers={"x-api-key": CI_BOT_KEY}
    )
    assert not result.is_error
    assert all("x-api-key" not in entry["headers"] for entry in recorder.entries())
    assert recorder.entries()[-1]["headers"]["x-gateway-client-id"] == "ci-bot"


async def test_a2a_send_message_allowed_and_denied_by_scope(stack: Stack) -> None:
    card = await a2a_fetch_card(stack.helper_url, headers={})  # the card is public
    assert card.name
    allowed = stack.bearer("agent:chat", audience=audience(stack, "/agents/helper"))
    reply = await a2a_send_message(stack.helper_url, "hello", headers=allowed)
    assert "hello" in reply
    denied_headers = stack.bearer("fininfo:read", audience=audience(stack, "/agents/helper"))
    with pytest.raises(GatewayDenied) as denied:
        await a2a_send_message(stack.helper_url, "hello", headers=denied_headers)
    assert denied.value.status == 403
    assert 'scope="agent:chat"' in denied.value.headers["www-authenticate"]
    assert HELPER_RESOURCE  # the test bundle's own resource is not this stack's


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("garbage-json", 400, "invalid_json"),
        ("duplicate-keys", 400, "duplicate_key"),
        ("batch-in-2025-06-18", 400, "batch_not_allowed"),
        ("truncated-body", 400, "body_truncated"),
        ("token-in-query", 400, "token_in_query"),
        ("two-authorization-headers", 400, "multiple_authorization_headers"),
        ("mcp-name-mismatch", 400, "header_mismatch"),
        ("unknown-protocol-version", 400, "unknown_protocol_version"),
        ("bad-origin", 403, "origin_not_allowed"),
        ("alg-none-token", 401, "alg_not_allowed"),
    ],
)
async def test_bad_input_through_envoy_gets_a_specific_denial_and_service_keeps_serving(
    stack: Stack, case: str, status: int, reason: str
) -> None:
    token = stack.bundle.token("fininfo:read", audience=stack.fininfo_url)
    auth = {"authorization": f"Bearer {token}"}
    path = "/fininfo/mcp"
    body: bytes | dict[str, object] = TOOL_CALL
    headers = dict(auth)
    if case == "garbage-json":
        body = b'{"jsonrpc": "2.0", "id": 1, "method": '
    elif case == "duplicate-keys":
        body = (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
            b'"params":{"name":"get_quote","name":"place_trade"}}'
        )
    elif case == "batch-in-2025-06-18":
        body = json.dumps([TOOL_CALL]).encode()
    elif case == "truncated-body":
        body = json.dumps(
            {**TOOL_CALL, "params": {"name": "get_quote", "arguments": {"pad": "x" * 200_000}}}
        ).encode()
    elif case == "token-in-query":
        path = f"/fininfo/mcp?access_token={token}"
    elif case == "mcp-name-mismatch":
        headers.update(
            {
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
                "mcp-name": "list_symbols",
            }
        )
    elif case == "unknown-protocol-version":
        headers["mcp-protocol-version"] = "1999-01-01"
    elif case == "bad-origin":
        headers["origin"] = "https://evil.example"
    elif case == "alg-none-token":
        headers["authorization"] = f"Bearer {unsigned_token(stack)}"
    if case == "two-authorization-headers":
        two = [("authorization", f"Bearer {token}"), ("authorization", "Bearer other")]
        response = await raw_post(stack, body, two, path)
    else:
        response = await raw_post(stack, body, headers, path)
    assert response.status_code == status, response.text
    document = response.json()
    found = document["error"]["data"]["reason"] if "jsonrpc" in document else document["error"]
    assert found == reason
    assert token not in response.text
    result = await mcp_call_tool(stack.fininfo_url, "get_quote", {"symbol": "ACME"}, headers=auth)
    assert not result.is_error


def test_unrouted_path_is_404_and_discovery_is_public(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/nowhere", timeout=10).status_code == 404
    card = httpx.get(f"{stack.helper_url}.well-known/agent-card.json", timeout=10)
    assert card.status_code == 200
    assert card.json()["name"]
