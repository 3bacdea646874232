"""What the real MCP and A2A SDK clients do when a gateway refuses them, and what our helpers make
of it.

A small fault-injecting layer sits in front of a real demo peer and answers chosen requests
itself: HTTP 401/403 with various bodies, or HTTP 200 with a JSON-RPC error. The raw-SDK tests
pin the SDKs' behaviour (so an SDK upgrade that changes it fails here, not deep inside an e2e
test); the helper tests pin the exceptions ``tests.support.peers`` turns it into.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from a2a.client import A2AClientError, AgentCardResolutionError, ClientConfig, create_client
from a2a.helpers import new_text_message
from a2a.types.a2a_pb2 import Role, SendMessageRequest
from a2a.utils.errors import InternalError
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policy_service.dev import demo_agent, demo_fininfo
from policy_service.dev.header_recorder import HeaderRecorder
from policy_service.dev.peers import AppServer, bind_socket
from tests.support.peers import (
    GatewayDenied,
    RpcError,
    a2a_fetch_card,
    a2a_send_message,
    mcp_call_tool,
    tool_text,
)

HEADERS = {"Authorization": "Bearer client-token"}
MODES = ["auto", "legacy"]
SEND_METHODS = ["SendMessage", "SendStreamingMessage"]

# -- the fault-injecting layer ------------------------------------------------------------------

Body = bytes | Callable[[dict[str, Any]], bytes]


@dataclass(frozen=True)
class Refusal:
    status: int
    body: Body
    content_type: str = "application/json"


def json_body(document: object) -> bytes:
    return json.dumps(document).encode()


def rpc_error_body(code: int, *, same_id: bool = True) -> Body:
    """A JSON-RPC error answering the request (or, with ``same_id=False``, id null)."""

    def render(request: dict[str, Any]) -> bytes:
        return json_body(
            {
                "jsonrpc": "2.0",
                "id": request.get("id") if same_id else None,
                "error": {"code": code, "message": "denied by policy", "data": {"scope": "x"}},
            }
        )

    return render


OAUTH_401 = Refusal(401, json_body({"error": "invalid_token", "error_description": "expired"}))
OAUTH_403 = Refusal(403, json_body({"error": "insufficient_scope", "error_description": "trade"}))
TEXT_403 = Refusal(403, b"RBAC: access denied", "text/plain")
RPC_403_AT_403 = Refusal(403, rpc_error_body(403))
RPC_403_AT_200 = Refusal(200, rpc_error_body(403))
RPC_403_AT_200_NULL_ID = Refusal(200, rpc_error_body(403, same_id=False))


@dataclass
class FaultInjector:
    """Refuses requests chosen by JSON-RPC method (POST) or by path; passes the rest on."""

    app: ASGIApp
    refusals: dict[str, Refusal] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        request = _json_object(body)
        method = request.get("method") if request else None
        key = method if isinstance(method, str) else scope["path"]
        self.seen.append(key if scope["method"] != "DELETE" else "DELETE")
        refusal = self.refusals.get(key)
        if refusal is None:
            await self.app(scope, _replay(body, receive), send)
            return
        content = refusal.body(request or {}) if callable(refusal.body) else refusal.body
        response = Response(
            content,
            status_code=refusal.status,
            media_type=refusal.content_type,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"', "X-Refused-By": "test"},
        )
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


@dataclass
class Faulty:
    url: str  # the MCP endpoint or the agent's base URL, through the fault injector
    injector: FaultInjector
    recorder: HeaderRecorder  # what reached the real peer

    def refuse(self, refusals: Mapping[str, Refusal]) -> None:
        self.injector.refusals = dict(refusals)


@pytest.fixture
async def fininfo() -> AsyncIterator[Faulty]:
    recorder = demo_fininfo.build_app()
    injector = FaultInjector(recorder)
    server = AppServer("faulty-fininfo", injector, bind_socket("127.0.0.1", 0))
    await server.start()
    try:
        yield Faulty(server.base_url + "mcp", injector, recorder)
    finally:
        await server.stop()


@pytest.fixture
async def agent() -> AsyncIterator[Faulty]:
    sock = bind_socket("127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    recorder = demo_agent.build_app(base_url)
    injector = FaultInjector(recorder)
    server = AppServer("faulty-agent", injector, sock)
    await server.start()
    try:
        yield Faulty(base_url, injector, recorder)
    finally:
        await server.stop()


# -- raw MCP SDK --------------------------------------------------------------------------------


async def raw_mcp_call(url: str, mode: str, limit: float = 10.0) -> CallToolResult | Exception:
    """Call get_quote with the bare SDK, returning whatever it raised instead of raising."""
    try:
        with anyio.fail_after(limit):
            async with (
                httpx2.AsyncClient(headers=HEADERS) as http,
                Client(streamable_http_client(url, http_client=http), mode=mode) as client,
            ):
                return await client.call_tool("get_quote", {"symbol": "AAPL"})
    except Exception as exc:
        return exc


def nested_mcp_error(exc: object) -> MCPError:
    """Assert the SDK's shape for every error: ExceptionGroup[ExceptionGroup[MCPError]]."""
    assert isinstance(exc, ExceptionGroup), repr(exc)
    (inner,) = exc.exceptions
    assert isinstance(inner, ExceptionGroup), repr(inner)
    (leaf,) = inner.exceptions
    assert isinstance(leaf, MCPError), repr(leaf)
    return leaf


async def test_sdk_auto_mode_speaks_2026_with_method_headers(fininfo: Faulty) -> None:
    result = await raw_mcp_call(fininfo.url, "auto")

    assert isinstance(result, CallToolResult)
    entries = fininfo.recorder.entries()
    methods = [(e["method"], e["jsonrpc_methods"]) for e in entries]
    # No initialize, no session, no DELETE; the result's output schema is checked against a
    # tools/list the SDK sends by itself after the call.
    assert methods == [
        ("POST", ["server/discover"]),
        ("POST", ["tools/call"]),
        ("POST", ["tools/list"]),
    ]
    call = entries[1]["headers"]
    assert call["mcp-protocol-version"] == "2026-07-28"
    assert call["mcp-method"] == "tools/call"
    assert call["mcp-name"] == "get_quote"
    assert "mcp-session-id" not in call
    assert call["authorization"] == "Bearer client-token"


async def test_sdk_legacy_mode_speaks_2025_with_a_session(fininfo: Faulty) -> None:
    result = await raw_mcp_call(fininfo.url, "legacy")

    assert isinstance(result, CallToolResult)
    entries = fininfo.recorder.entries()
    # The GET (server-to-client stream) opens concurrently with the calls: order not pinned.
    assert [e["method"] for e in entries].count("GET") == 1
    assert [(e["method"], e["jsonrpc_methods"]) for e in entries if e["method"] != "GET"] == [
        ("POST", ["initialize"]),
        ("POST", ["notifications/initialized"]),
        ("POST", ["tools/call"]),
        ("POST", ["tools/list"]),
        ("DELETE", []),
    ]
    call = next(e["headers"] for e in entries if e["jsonrpc_methods"] == ["tools/call"])
    assert call["mcp-session-id"]
    assert call["mcp-protocol-version"] != "2026-07-28"
    assert "mcp-method" not in call


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("refusal", [OAUTH_401, OAUTH_403, TEXT_403], ids=["401", "403", "403txt"])
async def test_sdk_turns_an_http_refusal_into_an_anonymous_internal_error(
    fininfo: Faulty, mode: str, refusal: Refusal
) -> None:
    fininfo.refuse({"tools/call": refusal})

    error = nested_mcp_error(await raw_mcp_call(fininfo.url, mode))

    # Status, body and WWW-Authenticate are all lost.
    assert (error.code, error.message, error.data) == (
        -32603,
        "Server returned an error response",
        None,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("refusal", [RPC_403_AT_403, RPC_403_AT_200], ids=["http403", "http200"])
async def test_sdk_surfaces_a_jsonrpc_error_body_whatever_the_status(
    fininfo: Faulty, mode: str, refusal: Refusal
) -> None:
    fininfo.refuse({"tools/call": refusal})

    error = nested_mcp_error(await raw_mcp_call(fininfo.url, mode))

    assert (error.code, error.message, error.data) == (403, "denied by policy", {"scope": "x"})


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_hangs_on_a_jsonrpc_error_with_another_id_at_200(
    fininfo: Faulty, mode: str
) -> None:
    fininfo.refuse({"tools/call": RPC_403_AT_200_NULL_ID})

    outcome = await raw_mcp_call(fininfo.url, mode, limit=1.5)

    assert isinstance(outcome, TimeoutError)


async def test_sdk_auto_mode_retries_a_refused_probe_with_initialize(fininfo: Faulty) -> None:
    fininfo.refuse({"server/discover": OAUTH_403})

    result = await raw_mcp_call(fininfo.url, "auto")

    assert isinstance(result, CallToolResult)
    assert fininfo.injector.seen[:2] == ["server/discover", "initialize"]


async def test_sdk_auto_mode_refused_everywhere_fails_at_connect(fininfo: Faulty) -> None:
    fininfo.refuse({"server/discover": OAUTH_401, "initialize": OAUTH_401})

    error = nested_mcp_error(await raw_mcp_call(fininfo.url, "auto"))

    assert error.code == -32603
    assert fininfo.injector.seen == ["server/discover", "initialize"]


# -- MCP helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_helper_reports_an_http_refusal_with_status_body_and_headers(
    fininfo: Faulty, mode: str
) -> None:
    fininfo.refuse({"tools/call": OAUTH_401})

    with pytest.raises(GatewayDenied) as caught:
        await mcp_call_tool(
            fininfo.url, "get_quote", {"symbol": "AAPL"}, headers=HEADERS, mode=mode
        )

    denied = caught.value
    assert denied.status == 401
    assert denied.rpc_method == "tools/call"
    assert denied.json() == {"error": "invalid_token", "error_description": "expired"}
    assert denied.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert denied.rpc_error is None
    assert isinstance(denied.__cause__, MCPError)


async def test_helper_keeps_a_plain_text_refusal(fininfo: Faulty) -> None:
    fininfo.refuse({"tools/call": TEXT_403})

    with pytest.raises(GatewayDenied) as caught:
        await mcp_call_tool(fininfo.url, "get_quote", {"symbol": "AAPL"}, headers=HEADERS)

    assert (caught.value.status, caught.value.body) == (403, b"RBAC: access denied")
    assert caught.value.json() is None


async def test_helper_exposes_a_jsonrpc_error_sent_with_an_http_refusal(fininfo: Faulty) -> None:
    fininfo.refuse({"tools/call": RPC_403_AT_403})

    with pytest.raises(GatewayDenied) as caught:
        await mcp_call_tool(fininfo.url, "get_quote", {"symbol": "AAPL"}, headers=HEADERS)

    assert caught.value.status == 403
    assert caught.value.rpc_error == {
        "code": 403,
        "message": "denied by policy",
        "data": {"scope": "x"},
    }


@pytest.mark.parametrize("mode", MODES)
async def test_helper_reports_a_jsonrpc_error_at_200(fininfo: Faulty, mode: str) -> None:
    fininfo.refuse({"tools/call": RPC_403_AT_200})

    with pytest.raises(RpcError) as caught:
        await mcp_call_tool(
            fininfo.url, "get_quote", {"symbol": "AAPL"}, headers=HEADERS, mode=mode
        )

    error = caught.value
    assert (error.code, error.message, error.data) == (403, "denied by policy", {"scope": "x"})
    assert error.rpc_method == "tools/call"


async def test_helper_bounds_the_sdk_hang(fininfo: Faulty) -> None:
    fininfo.refuse({"tools/call": RPC_403_AT_200_NULL_ID})

    with pytest.raises(TimeoutError, match="whose id is not the request's"):
        await mcp_call_tool(
            fininfo.url, "get_quote", {"symbol": "AAPL"}, headers=HEADERS, time_limit=1.5
        )


async def test_helper_names_the_refused_handshake(fininfo: Faulty) -> None:
    fininfo.refuse({"server/discover": OAUTH_401, "initialize": OAUTH_401})

    with pytest.raises(GatewayDenied) as caught:
        await mcp_call_tool(fininfo.url, "get_quote", {"symbol": "AAPL"}, headers=HEADERS)

    assert (caught.value.status, caught.value.rpc_method) == (401, "initialize")


async def test_helper_ignores_a_refused_probe_that_initialize_recovered(fininfo: Faulty) -> None:
    fininfo.refuse({"server/discover": OAUTH_403})

    result = await mcp_call_tool(fininfo.url, "get_quote", {"symbol": "AAPL"}, headers=HEADERS)

    assert json.loads(tool_text(result))["symbol"] == "AAPL"


async def test_a_refused_tools_list_fails_a_tool_call_that_succeeded(fininfo: Faulty) -> None:
    # The SDK validates structured output against the tool's listed schema, listing the
    # tools itself when it has not yet: a token that may call a tool but not list the tools
    # gets an error although the call went through.
    fininfo.refuse({"tools/list": OAUTH_403})

    with pytest.raises(GatewayDenied) as caught:
        await mcp_call_tool(fininfo.url, "get_quote", {"symbol": "AAPL"}, headers=HEADERS)

    assert (caught.value.status, caught.value.rpc_method) == (403, "tools/list")
    assert "tools/call" in fininfo.injector.seen


# -- raw A2A SDK --------------------------------------------------------------------------------


async def raw_a2a_send(base_url: str, streaming: bool) -> list[object] | Exception:
    """Send one message with the bare SDK, returning whatever it raised instead of raising."""
    try:
        with anyio.fail_after(10):
            async with httpx.AsyncClient(headers=HEADERS) as http:
                config = ClientConfig(httpx_client=http, streaming=streaming)
                client = await create_client(base_url, client_config=config)
                request = SendMessageRequest(message=new_text_message("hi", role=Role.ROLE_USER))
                return [event async for event in client.send_message(request)]
    except Exception as exc:
        return exc


@pytest.mark.parametrize("streaming", [False, True])
async def test_a2a_sdk_wire(agent: Faulty, streaming: bool) -> None:
    outcome = await raw_a2a_send(agent.url, streaming)

    assert isinstance(outcome, list)
    card, send = agent.recorder.entries()
    assert card["path"] == "/.well-known/agent-card.json"
    assert send["jsonrpc_methods"] == [SEND_METHODS[streaming]]
    assert card["headers"]["a2a-version"] == send["headers"]["a2a-version"] == "1.0"


@pytest.mark.parametrize("refusal", [OAUTH_401, OAUTH_403], ids=["401", "403"])
async def test_a2a_sdk_card_refusal(agent: Faulty, refusal: Refusal) -> None:
    agent.refuse({"/.well-known/agent-card.json": refusal})

    error = await raw_a2a_send(agent.url, streaming=False)

    assert isinstance(error, AgentCardResolutionError)
    assert error.status_code == refusal.status
    assert isinstance(error.__cause__, httpx.HTTPStatusError)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    "refusal", [OAUTH_401, OAUTH_403, RPC_403_AT_403], ids=["401", "403", "403rpc"]
)
async def test_a2a_sdk_send_refusal(agent: Faulty, streaming: bool, refusal: Refusal) -> None:
    agent.refuse({SEND_METHODS[streaming]: refusal})

    error = await raw_a2a_send(agent.url, streaming)

    # A bare client error: no status attribute, and a JSON-RPC error body is not parsed.
    assert type(error) is A2AClientError
    assert error.message.startswith(f"HTTP Error {refusal.status}: ")
    assert error.data is None
    cause = error.__cause__
    assert isinstance(cause, httpx.HTTPStatusError)
    assert cause.response.status_code == refusal.status
    assert cause.response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("streaming", [False, True])
async def test_a2a_sdk_drops_the_data_of_an_unknown_jsonrpc_error(
    agent: Faulty, streaming: bool
) -> None:
    agent.refuse({SEND_METHODS[streaming]: RPC_403_AT_200})

    error = await raw_a2a_send(agent.url, streaming)

    assert type(error) is A2AClientError
    assert (error.message, error.data) == ("JSON-RPC Error 403: denied by policy", None)


async def test_a2a_sdk_maps_a_known_jsonrpc_error_and_ignores_its_id(agent: Faulty) -> None:
    agent.refuse({"SendMessage": Refusal(200, rpc_error_body(-32603, same_id=False))})

    error = await raw_a2a_send(agent.url, streaming=False)

    assert isinstance(error, InternalError)
    assert error.message == "denied by policy"


# -- A2A helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
async def test_a2a_helper_reports_a_send_refusal(agent: Faulty, streaming: bool) -> None:
    agent.refuse({SEND_METHODS[streaming]: RPC_403_AT_403})

    with pytest.raises(GatewayDenied) as caught:
        await a2a_send_message(agent.url, "hi", headers=HEADERS, streaming=streaming)

    denied = caught.value
    assert denied.status == 403
    assert denied.rpc_method == SEND_METHODS[streaming]
    assert denied.rpc_error == {"code": 403, "message": "denied by policy", "data": {"scope": "x"}}
    assert denied.headers["x-refused-by"] == "test"


async def test_a2a_helper_reports_a_card_refusal(agent: Faulty) -> None:
    agent.refuse({"/.well-known/agent-card.json": OAUTH_401})

    with pytest.raises(GatewayDenied) as from_send:
        await a2a_send_message(agent.url, "hi", headers=HEADERS)
    with pytest.raises(GatewayDenied) as from_fetch:
        await a2a_fetch_card(agent.url, headers=HEADERS)

    for denied in (from_send.value, from_fetch.value):
        assert (denied.status, denied.rpc_method) == (401, None)
        assert denied.json() == {"error": "invalid_token", "error_description": "expired"}


@pytest.mark.parametrize("streaming", [False, True])
async def test_a2a_helper_keeps_the_data_of_a_jsonrpc_error(agent: Faulty, streaming: bool) -> None:
    agent.refuse({SEND_METHODS[streaming]: RPC_403_AT_200})

    with pytest.raises(RpcError) as caught:
        await a2a_send_message(agent.url, "hi", headers=HEADERS, streaming=streaming)

    error = caught.value
    assert (error.code, error.message, error.data) == (403, "denied by policy", {"scope": "x"})
    assert error.rpc_method == SEND_METHODS[streaming]
