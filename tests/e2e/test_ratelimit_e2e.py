"""Rate limits end to end: a real MCP client through a real Envoy, buckets in a real Redis.

The client must see a clear refusal with a retry hint: HTTP 429, Retry-After and the
RateLimit fields, and a JSON-RPC error (echoing its id) whose code suits the MCP revision
it speaks. Allowed answers carry the RateLimit fields too.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import httpx
import pytest
from mcp import MCPError

from policy_service.dev.redis_server import RedisServer
from tests.e2e.conftest import Stack, start_stack
from tests.support.peers import GatewayDenied, mcp_call_tool

pytestmark = pytest.mark.e2e

LIMITS = """\
  - name: quotes
    rate: 3/hour
    key: [client, tool]
    match: {upstreams: [fininfo], tools: [get_quote]}
  - name: per-client
    rate: 1000/min
    key: [client]
"""
QUOTE = {"symbol": "ACME"}
_clients = itertools.count()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Stack]:
    yield from start_stack(
        tmp_path_factory.mktemp("limited"), limits=LIMITS, redis_url=redis_server.url
    )


def fresh_client(stack: Stack) -> dict[str, str]:
    """A token of a client nobody has used yet, so each test starts with full buckets."""
    return stack.bearer(
        "fininfo:read", audience=stack.fininfo_url, client_id=f"agent-{next(_clients)}"
    )


async def exhaust_quotes(stack: Stack, headers: dict[str, str], mode: str) -> GatewayDenied:
    for _ in range(3):
        result = await mcp_call_tool(
            stack.fininfo_url, "get_quote", QUOTE, headers=headers, mode=mode
        )
        assert not result.is_error
    with pytest.raises(GatewayDenied) as denied:
        await mcp_call_tool(stack.fininfo_url, "get_quote", QUOTE, headers=headers, mode=mode)
    return denied.value


@pytest.mark.parametrize(
    ("mode", "expected_code"),
    [
        # The SDK's default: MCP 2026-07-28, where -32000..-32099 belongs to the spec.
        ("auto", 429),
        # The initialize handshake negotiates an earlier revision: the customary -32029.
        ("legacy", -32029),
    ],
)
async def test_mcp_client_over_the_limit_gets_429_with_a_retry_hint(
    limited: Stack, mode: str, expected_code: int
) -> None:
    denied = await exhaust_quotes(limited, fresh_client(limited), mode)

    assert denied.status == 429
    retry_after = int(denied.headers["retry-after"])
    assert 1100 <= retry_after <= 1200  # one token of 3/hour: 20 minutes
    assert denied.headers["ratelimit-policy"] == '"quotes";q=3;w=3600, "per-client";q=1000;w=60'
    assert denied.headers["ratelimit"].startswith(f'"quotes";r=0;t={retry_after}, "per-client";r=')
    error = denied.rpc_error
    assert error is not None
    assert error["code"] == expected_code
    assert error["data"] == {
        "reason": "rate_limited",
        "limit_name": "quotes",
        "scope": "client+tool",
        "retry_after": retry_after,
        "limit": 3,
        "window": 3600,
    }
    # What the agent's own SDK raised: the same code and data, not a transport error.
    sdk_error = denied.__cause__
    assert isinstance(sdk_error, MCPError)
    assert sdk_error.code == expected_code
    assert sdk_error.data["retry_after"] == retry_after


async def test_the_limit_is_per_client_and_per_tool(limited: Stack) -> None:
    tired = fresh_client(limited)
    await exhaust_quotes(limited, tired, "auto")
    # Another tool for the same client is not counted by `quotes`...
    result = await mcp_call_tool(limited.fininfo_url, "list_symbols", {}, headers=tired)
    assert not result.is_error
    # ...and another client has its own bucket.
    result = await mcp_call_tool(
        limited.fininfo_url, "get_quote", QUOTE, headers=fresh_client(limited)
    )
    assert not result.is_error


async def test_allowed_answers_carry_the_ratelimit_fields(limited: Stack) -> None:
    headers = {
        **fresh_client(limited),
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        # Stateless MCP 2026-07-28, so one bare POST is a whole call.
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "get_quote",
    }
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "get_quote", "arguments": QUOTE, "_meta": meta},
    }
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.post(limited.fininfo_url, content=json.dumps(body), headers=headers)
        second = await client.post(limited.fininfo_url, content=json.dumps(body), headers=headers)

    assert first.status_code == 200, first.text
    assert first.headers["ratelimit-policy"] == '"quotes";q=3;w=3600, "per-client";q=1000;w=60'
    assert first.headers["ratelimit"].startswith('"quotes";r=2;t=1200, "per-client";r=')
    assert second.headers["ratelimit"].startswith('"quotes";r=1;t=2400, "per-client";r=')


async def test_a_refused_call_never_reaches_the_upstream_nor_spends_budget(limited: Stack) -> None:
    tired = fresh_client(limited)
    denied = await exhaust_quotes(limited, tired, "auto")
    assert denied.status == 429
    # Refused again: still r=0 and the same wait (nothing was taken by the refusals).
    with pytest.raises(GatewayDenied) as again:
        await mcp_call_tool(limited.fininfo_url, "get_quote", QUOTE, headers=tired)
    assert again.value.headers["ratelimit"].startswith('"quotes";r=0;')
    assert abs(int(again.value.headers["retry-after"]) - int(denied.headers["retry-after"])) <= 1
