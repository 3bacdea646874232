"""The demo peers answer the real SDK clients, and record what they received.

No gateway here: the helpers talk to each peer directly. This proves the peers and the client
helpers that the end-to-end tests will point at Envoy instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from mcp.types import CallToolResult

from policy_service.dev import demo_currenttime, demo_fininfo
from policy_service.dev.demo_agent import build_card, reply_to
from policy_service.dev.peers import DemoPeers, serve_peers
from tests.support.peers import (
    a2a_fetch_card,
    a2a_send_message,
    clear_recorded_requests,
    fetch_recorded_requests,
    mcp_call_tool,
    mcp_get_prompt,
    mcp_list_tools,
    mcp_read_resource,
    tool_text,
)

HEADERS = {"Authorization": "Bearer client-token", "X-Test-Marker": "demo-peers"}
FREE_PORTS = {"fininfo": 0, "currenttime": 0, "agent": 0}


@pytest.fixture
async def peers() -> AsyncIterator[DemoPeers]:
    async with serve_peers("127.0.0.1", FREE_PORTS) as running:
        yield running


# -- MCP: fininfo -------------------------------------------------------------------------------


async def test_fininfo_lists_its_tools(peers: DemoPeers) -> None:
    tools = await mcp_list_tools(peers.fininfo.mcp_url, headers=HEADERS)

    assert sorted(tool.name for tool in tools) == [
        "get_account_notes",
        "get_quote",
        "get_statement",
        "list_symbols",
        "place_trade",
        "stream_report",
    ]


async def test_get_quote_is_deterministic(peers: DemoPeers) -> None:
    result = await mcp_call_tool(
        peers.fininfo.mcp_url, "get_quote", {"symbol": "acme"}, headers=HEADERS
    )

    assert not result.is_error
    expected = {"symbol": "ACME", "price": demo_fininfo.quote_price("ACME"), "currency": "USD"}
    assert result.structured_content == expected
    assert json.loads(tool_text(result)) == expected


async def test_place_trade_confirms(peers: DemoPeers) -> None:
    arguments = {"symbol": "MSFT", "side": "sell", "quantity": 7}
    result = await mcp_call_tool(peers.fininfo.mcp_url, "place_trade", arguments, headers=HEADERS)

    assert not result.is_error
    confirmation = result.structured_content
    assert confirmation is not None
    assert confirmation["status"] == "filled"
    assert (confirmation["symbol"], confirmation["side"], confirmation["quantity"]) == (
        "MSFT",
        "sell",
        7,
    )
    assert confirmation["confirmation_id"].startswith("T-")


async def test_a_tool_failure_is_a_result_not_an_exception(peers: DemoPeers) -> None:
    result = await mcp_call_tool(
        peers.fininfo.mcp_url, "get_quote", {"symbol": "NOPE"}, headers=HEADERS
    )

    assert result.is_error
    assert "unknown symbol 'NOPE'" in tool_text(result)


async def test_fininfo_resource_and_prompt(peers: DemoPeers) -> None:
    resource = await mcp_read_resource(peers.fininfo.mcp_url, "fin://symbols", headers=HEADERS)
    prompt = await mcp_get_prompt(
        peers.fininfo.mcp_url, "summarize_position", {"symbol": "nvda"}, headers=HEADERS
    )

    (contents,) = resource.contents
    assert json.loads(getattr(contents, "text", "")) == {"symbols": list(demo_fininfo.SYMBOLS)}
    (message,) = prompt.messages
    assert "100 shares of NVDA" in getattr(message.content, "text", "")


async def test_legacy_mode_works_too(peers: DemoPeers) -> None:
    result = await mcp_call_tool(
        peers.fininfo.mcp_url, "list_symbols", {}, headers=HEADERS, mode="legacy"
    )

    assert not result.is_error
    assert result.structured_content == {"result": list(demo_fininfo.SYMBOLS)}


# -- MCP: currenttime ---------------------------------------------------------------------------


async def test_current_time_in_a_timezone(peers: DemoPeers) -> None:
    result = await mcp_call_tool(
        peers.currenttime.mcp_url, "current_time", {"timezone": "Asia/Tokyo"}, headers=HEADERS
    )

    assert not result.is_error
    answer = result.structured_content
    assert answer is not None
    assert answer["timezone"] == "Asia/Tokyo"
    assert answer["iso"].endswith("+09:00")
    assert abs(answer["unix"] - datetime.now(UTC).timestamp()) < 60


async def test_current_time_defaults_to_utc_and_rejects_unknown_zones(peers: DemoPeers) -> None:
    default = await mcp_call_tool(peers.currenttime.mcp_url, "current_time", {}, headers=HEADERS)
    unknown = await mcp_call_tool(
        peers.currenttime.mcp_url, "current_time", {"timezone": "Mars/Olympus"}, headers=HEADERS
    )

    assert default.structured_content is not None
    assert default.structured_content["timezone"] == "UTC"
    assert unknown.is_error
    assert "unknown timezone 'Mars/Olympus'" in tool_text(unknown)


async def test_currenttime_clock_can_be_pinned() -> None:
    pinned = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    server = demo_currenttime.build_server(clock=lambda: pinned)

    result = await server.call_tool("current_time", {"timezone": "Europe/Paris"})

    assert isinstance(result, CallToolResult)
    assert result.structured_content == {
        "timezone": "Europe/Paris",
        "iso": "2030-01-02T04:04:05+01:00",
        "unix": int(pinned.timestamp()),
    }


# -- A2A: helper --------------------------------------------------------------------------------


async def test_agent_card_is_public_and_declares_bearer(peers: DemoPeers) -> None:
    card = await a2a_fetch_card(peers.agent.base_url, headers=HEADERS)

    assert card.name == "helper"
    assert [skill.id for skill in card.skills] == ["echo", "smalltalk"]
    (interface,) = card.supported_interfaces
    assert (interface.url, interface.protocol_binding) == (peers.agent.base_url, "JSONRPC")
    scheme = card.security_schemes["bearer"].http_auth_security_scheme
    assert scheme.scheme == "Bearer"
    assert list(card.security_requirements[0].schemes) == ["bearer"]


@pytest.mark.parametrize("streaming", [False, True], ids=["SendMessage", "SendStreamingMessage"])
async def test_agent_answers_a_message(peers: DemoPeers, streaming: bool) -> None:
    reply = await a2a_send_message(
        peers.agent.base_url, "hello there", headers=HEADERS, streaming=streaming
    )

    assert reply == reply_to("hello there") == "helper says: hello there"


async def test_agent_card_url_is_the_public_base_url() -> None:
    public = "http://127.0.0.1:8080/agents/helper/"
    async with (
        serve_peers("127.0.0.1", FREE_PORTS, public_base_url=public) as running,
        httpx.AsyncClient() as http,
    ):
        response = await http.get(running.agent.base_url + ".well-known/agent-card.json")

    response.raise_for_status()
    assert response.json()["supportedInterfaces"][0]["url"] == public
    assert running.agent_public_url == public
    assert build_card(public).supported_interfaces[0].url == public


# -- recorded headers ---------------------------------------------------------------------------


async def test_mcp_peer_records_the_headers_it_received(peers: DemoPeers) -> None:
    await clear_recorded_requests(peers.fininfo.base_url)
    await mcp_call_tool(peers.fininfo.mcp_url, "get_quote", {"symbol": "AAPL"}, headers=HEADERS)

    over_http = await fetch_recorded_requests(peers.fininfo.base_url)
    in_process = peers.fininfo.recorder.entries()

    assert over_http == in_process
    calls = [entry for entry in over_http if entry["jsonrpc_methods"] == ["tools/call"]]
    assert len(calls) == 1
    assert calls[0]["method"] == "POST"
    assert calls[0]["path"] == "/mcp"
    assert calls[0]["headers"]["authorization"] == "Bearer client-token"
    assert calls[0]["headers"]["x-test-marker"] == "demo-peers"
    # Reading the log is not itself logged.
    assert all(entry["path"] != "/_debug/last-headers" for entry in over_http)


async def test_agent_records_the_headers_it_received(peers: DemoPeers) -> None:
    await a2a_send_message(peers.agent.base_url, "hi", headers=HEADERS)

    entries = await fetch_recorded_requests(peers.agent.base_url)
    last = await fetch_recorded_requests(peers.agent.base_url, limit=1)

    assert [(e["method"], e["path"], e["jsonrpc_methods"]) for e in entries] == [
        ("GET", "/.well-known/agent-card.json", []),
        ("POST", "/", ["SendMessage"]),
    ]
    assert last == entries[-1:]
    assert last[0]["headers"]["authorization"] == "Bearer client-token"
    assert last[0]["headers"]["a2a-version"] == "1.0"
    assert peers.agent.recorder.last() == entries[-1]


async def test_clearing_and_limits(peers: DemoPeers) -> None:
    await mcp_list_tools(peers.currenttime.mcp_url, headers=HEADERS)
    assert await fetch_recorded_requests(peers.currenttime.base_url)

    await clear_recorded_requests(peers.currenttime.base_url)

    assert await fetch_recorded_requests(peers.currenttime.base_url) == []
    assert await fetch_recorded_requests(peers.currenttime.base_url, limit=0) == []
    assert peers.currenttime.recorder.last() is None


# -- lifecycle ----------------------------------------------------------------------------------


async def test_stop_frees_the_ports_and_is_idempotent() -> None:
    running = serve_peers("127.0.0.1", FREE_PORTS)
    await running.start()
    url = running.fininfo.mcp_url
    ports = {name: getattr(running, name).port for name in FREE_PORTS}

    await running.stop()
    await running.stop()

    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(url)
    # The same fixed ports can be taken again at once.
    async with serve_peers("127.0.0.1", ports) as again:
        assert again.fininfo.mcp_url == url


async def test_a_taken_port_fails_at_start() -> None:
    async with serve_peers("127.0.0.1", FREE_PORTS) as running:
        taken = {**FREE_PORTS, "agent": running.agent.port}
        with pytest.raises(OSError, match=r"[Aa]ddress already in use"):
            await serve_peers("127.0.0.1", taken).start()


def test_ports_must_name_every_peer() -> None:
    with pytest.raises(ValueError, match="missing: \\['agent'\\]"):
        serve_peers("127.0.0.1", {"fininfo": 0, "currenttime": 0})
