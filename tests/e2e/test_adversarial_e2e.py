"""Requests the gateway and an upstream could read differently, through a real Envoy.

Each class was found by an adversarial run against the dev bundle's shape: a tools/call of
place_trade that only fininfo:trade may make. For each, the gateway refuses, or what the
upstream receives names exactly one principal and one call.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from policy_service.identity.header_encoding import decode_header_value
from tests.e2e.conftest import Stack
from tests.support.peers import clear_recorded_requests, fetch_recorded_requests

pytestmark = pytest.mark.e2e

MCP_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2025-06-18",
}
TRADE = {
    "jsonrpc": "2.0",
    "id": 41,
    "method": "tools/call",
    "params": {"name": "place_trade", "arguments": {"symbol": "ACME", "quantity": 1}},
}
QUOTE = {
    "jsonrpc": "2.0",
    "id": 42,
    "method": "tools/call",
    "params": {"name": "get_quote", "arguments": {"symbol": "ACME"}},
}


# MCP 2026-07-28: stateless, so one request reaches the demo server with no session.
STATELESS_QUOTE = {
    **QUOTE,
    "params": {
        **QUOTE["params"],  # type: ignore[dict-item]
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    },
}
STATELESS_HEADERS = {
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "get_quote",
}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def send(
    stack: Stack,
    body: bytes | dict[str, Any],
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = "/fininfo/mcp",
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.request(
            method, f"{stack.url}{path}", content=content, headers={**MCP_HEADERS, **headers}
        )


def fininfo_token(stack: Stack, *scopes: str, **claims: Any) -> str:
    return stack.bundle.token(*scopes, audience=stack.fininfo_url, **claims)


async def upstream_saw_nothing(stack: Stack) -> bool:
    return await fetch_recorded_requests(stack.peers.fininfo.base_url) == []


@pytest.fixture
async def fresh_log(stack: Stack) -> Stack:
    await clear_recorded_requests(stack.peers.fininfo.base_url)
    return stack


@pytest.mark.parametrize("separator", ["\t", "\u00a0", "\n", "\u2003", "  "])
async def test_a_scope_claim_split_by_anything_but_one_space_grants_nothing(
    fresh_log: Stack, separator: str
) -> None:
    stack = fresh_log
    token = fininfo_token(stack, scope=f"fininfo:read{separator}fininfo:trade")
    answer = await send(stack, TRADE, {"authorization": f"Bearer {token}"})
    assert answer.status_code == 401, answer.text
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert await upstream_saw_nothing(stack)


async def test_a_comma_is_part_of_one_scope_token_not_a_separator(fresh_log: Stack) -> None:
    # RFC 6749 allows "," inside a scope-token: this is one scope that no rule names.
    stack = fresh_log
    token = fininfo_token(stack, scope="fininfo:read,fininfo:trade")
    answer = await send(stack, TRADE, {"authorization": f"Bearer {token}"})
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["data"]["missing_scopes"] == ["fininfo:trade"]
    assert await upstream_saw_nothing(stack)


@pytest.mark.parametrize(
    ("outer", "inner"),
    [("method", "Method"), ("params", "PARAMS"), ("name", "Name"), ("name", "NAME")],
)
async def test_keys_that_differ_only_in_case_are_refused_at_every_level(
    fresh_log: Stack, outer: str, inner: str
) -> None:
    stack = fresh_log
    token = fininfo_token(stack, "fininfo:read")
    # get_quote for the gateway, place_trade for a decoder that folds case, last one winning.
    text = json.dumps(QUOTE)
    if outer == "method":
        text = text.replace('"method": "tools/call"', f'"method": "tools/call", "{inner}": "x"')
    elif outer == "params":
        text = text.replace('"params": {', f'"{inner}": {{"name": "place_trade"}}, "params": {{')
    else:
        text = text.replace('"name": "get_quote"', f'"name": "get_quote", "{inner}": "place_trade"')
    assert text != json.dumps(QUOTE)
    answer = await send(stack, text.encode(), {"authorization": f"Bearer {token}"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == -32700
    assert answer.json()["error"]["data"]["reason"] == "duplicate_key"
    assert await upstream_saw_nothing(stack)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_a_body_on_a_method_that_carries_none_never_reaches_the_upstream(
    fresh_log: Stack, method: str
) -> None:
    stack = fresh_log
    token = fininfo_token(stack, "fininfo:read")
    answer = await send(stack, TRADE, {"authorization": f"Bearer {token}"}, method=method)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "unexpected_body"
    assert await upstream_saw_nothing(stack)


async def test_a_body_on_an_agent_card_get_is_refused(stack: Stack) -> None:
    answer = await send(
        stack,
        {"jsonrpc": "2.0", "id": 1, "method": "message/send"},
        {},
        method="GET",
        path="/agents/helper/.well-known/agent-card.json",
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "unexpected_body"


async def test_identity_headers_name_exactly_one_subject(fresh_log: Stack) -> None:
    stack = fresh_log
    seen: dict[str, str] = {}
    subjects = ["alice", "  alice  ", "bob\u00f1", "bob%C3%B1", "eve\u200b", "eve"]
    for subject in subjects:
        token = fininfo_token(stack, "fininfo:read", subject=subject)
        answer = await send(stack, STATELESS_QUOTE, STATELESS_HEADERS | bearer(token))
        assert answer.status_code == 200, answer.text
        recorded = await fetch_recorded_requests(stack.peers.fininfo.base_url, limit=1)
        header = recorded[-1]["headers"]["x-gateway-subject"]
        assert header == header.strip()
        assert header.isascii()
        assert header.isprintable()
        assert decode_header_value(header) == subject
        seen[subject] = header
    assert len(set(seen.values())) == len(subjects), seen


async def test_a_token_issued_in_the_future_is_refused(fresh_log: Stack) -> None:
    stack = fresh_log
    token = fininfo_token(stack, "fininfo:read", iat=int(time.time()) + 365 * 24 * 3600)
    answer = await send(stack, QUOTE, {"authorization": f"Bearer {token}"})
    assert answer.status_code == 401, answer.text
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


@pytest.mark.parametrize(
    "query",
    [
        "x=1;access_token={token}",
        "access_token={token};x=1",
        "x=1;ACCESS_TOKEN={token}",
        "a=b;api_key={token}",
    ],
)
async def test_a_token_after_a_semicolon_in_the_query_is_refused(
    fresh_log: Stack, query: str
) -> None:
    stack = fresh_log
    token = fininfo_token(stack, "fininfo:read")
    answer = await send(
        stack,
        QUOTE,
        {"authorization": f"Bearer {token}"},
        path=f"/fininfo/mcp?{query.format(token=token)}",
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["data"]["reason"] == "token_in_query"
    assert await upstream_saw_nothing(stack)


async def test_an_origin_denial_echoes_the_request_id(stack: Stack) -> None:
    token = fininfo_token(stack, "fininfo:read")
    answer = await send(
        stack, QUOTE, {"authorization": f"Bearer {token}", "origin": "https://evil.example"}
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["id"] == 42
    assert answer.json()["error"]["data"]["reason"] == "origin_not_allowed"


def agent_headers(stack: Stack) -> dict[str, str]:
    token = stack.bundle.token("agent:chat", audience=f"{stack.url}/agents/helper")
    return {"content-type": "application/json", "authorization": f"Bearer {token}"}


def push_send(url: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 51,
        "method": "message/send",
        "params": {
            "message": {
                "role": "user",
                "parts": [{"kind": "text", "text": "hi"}],
                "messageId": "m-51",
                "kind": "message",
            },
            "configuration": {"pushNotificationConfig": {"url": url}},
        },
    }


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "http://hooks.example.com/push",
        "https://127.1/",
        "https://hooks.example.com@10.0.0.1/",
    ],
)
async def test_an_a2a_push_url_aimed_inside_is_refused(stack: Stack, url: str) -> None:
    headers = agent_headers(stack)
    answer = await send(stack, push_send(url), headers, path="/agents/helper/")
    assert answer.status_code == 403, answer.text
    assert answer.json()["id"] == 51
    assert answer.json()["error"]["data"]["reason"] == "push_url_not_allowed"
    assert url not in answer.text  # the caller's URL is not echoed


async def test_an_a2a_push_url_to_a_public_https_host_passes_the_gateway(stack: Stack) -> None:
    headers = agent_headers(stack)
    answer = await send(
        stack, push_send("https://hooks.example.com/a2a"), headers, path="/agents/helper/"
    )
    # Whatever the demo agent makes of push notifications, the gateway let the call through.
    assert answer.headers.get("x-decision-id")
    assert "push_url_not_allowed" not in answer.text
    assert answer.status_code == 200, answer.text
