"""Client helpers for tests: the real MCP and A2A SDK clients, with custom headers, any URL.

Point them at a demo peer directly or at the gateway; every call opens a fresh connection,
sends the given headers (``Authorization: Bearer ...``) on every HTTP request, and turns the
SDKs' many failure shapes into two exceptions a test can assert on:

``GatewayDenied(status, body, headers)``
    The HTTP response to the failing JSON-RPC request (or to the agent-card GET) had status
    >= 400. ``rpc_error`` is the body's JSON-RPC ``error`` object when the body is one.
``RpcError(code, message, data)``
    The answer was HTTP 2xx carrying a JSON-RPC error object.

Anything else (connection refused, a bug) propagates as the SDK raised it, unwrapped from
the exception groups the MCP SDK adds. Each helper is bounded by ``time_limit`` seconds and
raises ``TimeoutError`` when it runs out.

What the SDKs do on their own (pinned by ``tests/integration/test_peer_clients.py``):

MCP (``mcp`` 2.3, ``mcp.Client`` over ``streamable_http_client``)
    * Default ``mode="auto"`` first POSTs ``server/discover`` at protocol ``2026-07-28``; a
      2.3 server answers it, and then there is no ``initialize``, no ``Mcp-Session-Id`` and
      no DELETE. Every POST carries ``MCP-Protocol-Version: 2026-07-28``, ``Mcp-Method`` and,
      for tools/call, resources/read and prompts/get, ``Mcp-Name``. Any error answer to the
      probe (a gateway's 401/403 included) silently falls back to the 2025 ``initialize``
      handshake, which ``mode="legacy"`` forces from the start.
    * After a successful ``tools/call`` whose tool this session has not listed, the SDK sends
      ``tools/list`` by itself (to validate structured output), in both modes: a token that
      may call a tool but not list tools sees the call fail (``GatewayDenied`` for
      ``tools/list`` here).
    * HTTP 401 or 403 (any body that is not a JSON-RPC error): ``MCPError`` code -32603,
      message "Server returned an error response", no data; the status, body and headers
      (``WWW-Authenticate``) are not kept anywhere. (Per the SDK source, not pinned here:
      HTTP 404 becomes -32601 "Not Found" before a session exists, else -32600 "Session
      terminated".)
    * HTTP 4xx whose ``application/json`` body is a JSON-RPC error: that error (code,
      message, data) is raised as ``MCPError`` (the SDK substitutes the request's id).
    * HTTP 200 with a JSON-RPC error carrying the request's id: ``MCPError`` with that code,
      message and data. With a different or null id the SDK drops the answer and **waits
      forever** (only a timeout ends it).
    * Every error leaves ``async with Client(...)`` wrapped twice:
      ``ExceptionGroup[ExceptionGroup[MCPError]]``. Nothing hangs except the id case above.

A2A (``a2a-sdk`` 1.3, JSON-RPC binding)
    * Sends ``A2A-Version: 1.0`` on every request, the card GET included; ``SendMessage`` for
      a non-streaming send, ``SendStreamingMessage`` when both the client config and the card
      allow streaming (``streaming=`` below).
    * Card GET 401/403: ``AgentCardResolutionError`` with ``status_code``; its ``__cause__``
      is the ``httpx.HTTPStatusError`` (body and headers on ``.response``).
    * JSON-RPC POST 401/403: ``A2AClientError("HTTP Error 403: ...")``, no status attribute,
      ``__cause__`` is the ``httpx.HTTPStatusError``; a JSON-RPC error in that body is ignored.
    * HTTP 200 + JSON-RPC error: a code the SDK knows (-32001..-32009, -32600..-32603,
      -32700) maps to its ``A2AError`` subclass; any other code becomes
      ``A2AClientError("JSON-RPC Error <code>: <message>")`` and ``data`` is dropped. The
      response id is not checked, so nothing hangs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import anyio
import httpx
import httpx2
from a2a.client import AgentCardResolutionError, ClientConfig, create_client
from a2a.client.card_resolver import A2ACardResolver
from a2a.helpers import get_stream_response_text, new_text_message
from a2a.types.a2a_pb2 import AgentCard, Role, SendMessageRequest
from a2a.utils.errors import A2AError
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.types import CallToolResult, GetPromptResult, ReadResourceResult, TextContent, Tool

DEFAULT_TIME_LIMIT: Final = 15.0

_T = TypeVar("_T")


class PeerCallError(Exception):
    """Base of the two ways a peer call is refused."""


class GatewayDenied(PeerCallError):
    """The failing request got HTTP status >= 400 (a gateway denial, usually)."""

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str],
        *,
        rpc_method: str | None = None,
        url: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = {name.lower(): value for name, value in headers.items()}
        self.rpc_method = rpc_method  # None for the agent-card GET
        self.url = url
        what = rpc_method or "request"
        super().__init__(f"HTTP {status} for {what} at {url}: {body[:300]!r}")

    def json(self) -> Any:
        """The body parsed as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def rpc_error(self) -> dict[str, Any] | None:
        """The body's JSON-RPC ``error`` object, if the body is a JSON-RPC error response."""
        document = self.json()
        if isinstance(document, dict) and isinstance(document.get("error"), dict):
            error: dict[str, Any] = document["error"]
            return error
        return None


class RpcError(PeerCallError):
    """An HTTP 2xx answer carrying a JSON-RPC error object."""

    def __init__(
        self, code: int, message: str, data: Any = None, *, rpc_method: str | None
    ) -> None:
        self.code = code
        self.message = message
        self.data = data
        self.rpc_method = rpc_method
        super().__init__(f"JSON-RPC error {code} for {rpc_method or 'request'}: {message}")


# -- MCP ---------------------------------------------------------------------------------------


async def mcp_call_tool(
    url: str,
    name: str,
    arguments: dict[str, Any],
    *,
    headers: Mapping[str, str],
    mode: str = "auto",
    time_limit: float = DEFAULT_TIME_LIMIT,
    progress_callback: ProgressFnT | None = None,
) -> CallToolResult:
    """Connect, call one tool, disconnect. A tool's own failure is ``result.is_error``.

    On the wire that is the handshake, ``tools/call``, then the SDK's own ``tools/list``.

    Raises ``GatewayDenied``, ``RpcError`` or ``TimeoutError`` (module docstring). ``mode``
    is the SDK's: "auto" (probe ``server/discover``, fall back to ``initialize``), "legacy"
    (``initialize`` only) or a modern protocol version. ``progress_callback`` gets the
    tool's progress notifications as they arrive.
    """

    async def step(client: Client) -> CallToolResult:
        return await client.call_tool(name, arguments, progress_callback=progress_callback)

    return await _mcp_run(url, headers, mode, time_limit, step)


async def mcp_list_tools(
    url: str,
    *,
    headers: Mapping[str, str],
    mode: str = "auto",
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> list[Tool]:
    """Connect, list the tools (first page), disconnect. Errors as for ``mcp_call_tool``."""

    async def step(client: Client) -> list[Tool]:
        return list((await client.list_tools()).tools)

    return await _mcp_run(url, headers, mode, time_limit, step)


async def mcp_read_resource(
    url: str,
    uri: str,
    *,
    headers: Mapping[str, str],
    mode: str = "auto",
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> ReadResourceResult:
    """Connect, read one resource, disconnect. Errors as for ``mcp_call_tool``."""

    async def step(client: Client) -> ReadResourceResult:
        return await client.read_resource(uri)

    return await _mcp_run(url, headers, mode, time_limit, step)


async def mcp_get_prompt(
    url: str,
    name: str,
    arguments: dict[str, str] | None = None,
    *,
    headers: Mapping[str, str],
    mode: str = "auto",
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> GetPromptResult:
    """Connect, get one prompt, disconnect. Errors as for ``mcp_call_tool``."""

    async def step(client: Client) -> GetPromptResult:
        return await client.get_prompt(name, arguments)

    return await _mcp_run(url, headers, mode, time_limit, step)


def tool_text(result: CallToolResult) -> str:
    """The text blocks of a tool result, joined with newlines."""
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


@dataclass
class _Exchange:
    """One POSTed JSON-RPC request and, if it was refused with status >= 400, the refusal."""

    rpc_method: str | None
    denial: GatewayDenied | None


@dataclass
class _McpHttpLog:
    """Watches the SDK's HTTP traffic, which is the only place a denial's status survives."""

    exchanges: list[_Exchange] = field(default_factory=list)

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        # Only POSTed JSON-RPC requests (with an id) can fail a call: the GET stream and the
        # session DELETE are retried or ignored by the SDK, and notifications get no answer.
        if request.method != "POST":
            return
        message = _json_object(_request_body(request))
        if message is None or "id" not in message:
            return
        method = message.get("method") if isinstance(message.get("method"), str) else None
        denial = None
        if response.status_code >= 400:
            # Read here (the SDK reads the same cached bytes later): after the SDK has turned
            # the response into an MCPError, the status, body and headers are gone.
            await response.aread()
            denial = GatewayDenied(
                response.status_code,
                response.content,
                dict(response.headers),
                rpc_method=method,
                url=str(request.url),
            )
        self.exchanges.append(_Exchange(method, denial))

    def mark(self) -> int:
        return len(self.exchanges)

    def last_since(self, mark: int) -> _Exchange | None:
        return self.exchanges[-1] if len(self.exchanges) > mark else None


async def _mcp_run(
    url: str,
    headers: Mapping[str, str],
    mode: str,
    time_limit: float,
    step: Callable[[Client], Awaitable[_T]],
) -> _T:
    log = _McpHttpLog()
    mark = 0  # exchanges before this index belong to a phase that already succeeded
    try:
        with anyio.fail_after(time_limit):
            async with httpx2.AsyncClient(
                headers=dict(headers),
                timeout=httpx2.Timeout(time_limit),
                event_hooks={"response": [log.on_response]},
            ) as http:
                transport = streamable_http_client(url, http_client=http)
                async with Client(transport, mode=mode) as client:
                    # A refused discover probe followed by a successful initialize is a
                    # success: only the step's own exchanges can explain its failure.
                    mark = log.mark()
                    return await step(client)
    except TimeoutError:
        last = log.last_since(mark)
        pending = last.rpc_method if last else "connect"
        raise TimeoutError(
            f"MCP call to {url} got no answer within {time_limit}s (last request: {pending}); "
            "the SDK drops a JSON-RPC response whose id is not the request's and keeps waiting"
        ) from None
    except BaseException as exc:
        leaf = _sole_leaf(exc)
        if not isinstance(leaf, MCPError):
            if leaf is exc:
                raise
            raise leaf from exc
        last = log.last_since(mark)
        if last is not None and last.denial is not None:
            raise last.denial from leaf
        raise RpcError(
            leaf.code, leaf.message, leaf.data, rpc_method=last.rpc_method if last else None
        ) from leaf


def _sole_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _request_body(request: httpx2.Request) -> bytes:
    try:
        return request.content
    except httpx2.RequestNotRead:
        return b""


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


# -- A2A ---------------------------------------------------------------------------------------


@dataclass
class _A2aHttpLog:
    """Keeps the last JSON-RPC error body, whose ``data`` the SDK drops for unknown codes."""

    rpc_error: dict[str, Any] | None = None
    rpc_method: str | None = None

    async def on_response(self, response: httpx.Response) -> None:
        if response.request.method != "POST":
            return
        message = _json_object(response.request.content)
        self.rpc_method = message.get("method") if message else None
        self.rpc_error = None
        content_type = response.headers.get("content-type", "")
        # Only plain JSON answers are read here: reading an event stream would buffer it to
        # the end. A gateway's JSON-RPC denial is plain JSON even for a streaming request.
        if response.is_success and content_type.startswith("application/json"):
            await response.aread()
            document = _json_object(response.content)
            if document is not None and isinstance(document.get("error"), dict):
                self.rpc_error = document["error"]


async def a2a_fetch_card(
    base_url: str,
    *,
    headers: Mapping[str, str],
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> AgentCard:
    """Fetch ``<base_url>/.well-known/agent-card.json`` with the SDK's card resolver.

    Raises ``GatewayDenied`` (``rpc_method`` None) when the GET gets status >= 400.
    """
    async with httpx.AsyncClient(headers=dict(headers), timeout=time_limit) as http:
        try:
            return await A2ACardResolver(http, base_url).get_agent_card()
        except AgentCardResolutionError as exc:
            _raise_card_denial(exc)
            raise


async def a2a_send_message(
    base_url: str,
    text: str,
    *,
    headers: Mapping[str, str],
    streaming: bool = False,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> str:
    """Fetch the card, send one text message with the SDK client, return the reply text.

    The message goes to the URL the card names (its JSON-RPC interface), not to
    ``base_url``. ``streaming=True`` uses ``SendStreamingMessage`` (the card allows it);
    the default sends ``SendMessage``. Raises ``GatewayDenied``, ``RpcError`` or
    ``TimeoutError`` (module docstring).
    """
    log = _A2aHttpLog()
    with anyio.fail_after(time_limit):
        async with httpx.AsyncClient(
            headers=dict(headers),
            timeout=time_limit,
            event_hooks={"response": [log.on_response]},
        ) as http:
            config = ClientConfig(httpx_client=http, streaming=streaming)
            try:
                client = await create_client(base_url, client_config=config)
            except AgentCardResolutionError as exc:
                _raise_card_denial(exc)
                raise
            request = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
            try:
                replies = [get_stream_response_text(e) async for e in client.send_message(request)]
            except A2AError as exc:
                cause = exc.__cause__
                if isinstance(cause, httpx.HTTPStatusError):
                    raise _denial_from(cause.response, log.rpc_method) from exc
                if log.rpc_error is not None:
                    error = log.rpc_error
                    code = error.get("code")
                    raise RpcError(
                        code if isinstance(code, int) else 0,
                        str(error.get("message", "")),
                        error.get("data"),
                        rpc_method=log.rpc_method,
                    ) from exc
                raise
            finally:
                await client.close()
    return "\n".join(reply for reply in replies if reply)


def _raise_card_denial(exc: AgentCardResolutionError) -> None:
    """Raise ``GatewayDenied`` if the card GET was refused by status; return otherwise."""
    cause = exc.__cause__
    if isinstance(cause, httpx.HTTPStatusError):
        raise _denial_from(cause.response, None) from exc


def _denial_from(response: httpx.Response, rpc_method: str | None) -> GatewayDenied:
    # The SDK has read the body before raising (streaming responses included).
    return GatewayDenied(
        response.status_code,
        response.content,
        dict(response.headers),
        rpc_method=rpc_method,
        url=str(response.request.url),
    )


async def fetch_recorded_requests(
    peer_base_url: str, *, limit: int | None = None
) -> list[dict[str, Any]]:
    """The request log of a demo peer (``GET /_debug/last-headers``), oldest first."""
    params = {"limit": str(limit)} if limit is not None else None
    async with httpx.AsyncClient(timeout=DEFAULT_TIME_LIMIT) as http:
        response = await http.get(peer_base_url.rstrip("/") + "/_debug/last-headers", params=params)
        response.raise_for_status()
        requests: list[dict[str, Any]] = response.json()["requests"]
        return requests


async def clear_recorded_requests(peer_base_url: str) -> None:
    """Empty a demo peer's request log (``DELETE /_debug/last-headers``)."""
    async with httpx.AsyncClient(timeout=DEFAULT_TIME_LIMIT) as http:
        response = await http.delete(peer_base_url.rstrip("/") + "/_debug/last-headers")
        response.raise_for_status()
