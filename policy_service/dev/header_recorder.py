"""Dev-only ASGI middleware that remembers the headers of the last requests a demo peer saw.

End-to-end tests need to prove what actually reached an upstream: that the client's
``Authorization`` header was stripped by the gateway and that the gateway's identity headers
were added. Each demo peer wraps its app in ``HeaderRecorder``, which keeps the last
``maxlen`` requests in memory and serves them as JSON:

    GET    /_debug/last-headers            {"requests": [<oldest> ... <newest>]}
    GET    /_debug/last-headers?limit=N    only the newest N
    DELETE /_debug/last-headers            forget everything (204)

Each entry is ``{"method", "path", "query", "headers", "jsonrpc_methods"}``. ``headers`` maps
lower-cased names to values (a repeated header's values are joined with ", ");
``jsonrpc_methods`` lists the JSON-RPC ``method`` of each message in a JSON request body, so a
test can pick out, say, the ``tools/call`` among the protocol's housekeeping requests.
Requests to the debug path itself are never recorded, so reading the log does not change it.

This is a test aid for a loopback dev stack. It stores credentials in memory and shows them
to anyone who asks, so it must never front a real service.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Final, TypedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEBUG_PATH: Final = "/_debug/last-headers"
"""Where every demo peer serves its request log."""

_MAX_BODY_PEEK: Final = 256 * 1024
"""Bodies larger than this are not parsed for JSON-RPC methods (the request still passes)."""


class RecordedRequest(TypedDict):
    """One request as a demo peer received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    jsonrpc_methods: list[str]


class HeaderRecorder:
    """Record each request's headers, and serve the record at ``DEBUG_PATH``."""

    def __init__(self, app: ASGIApp, *, maxlen: int = 50) -> None:
        self.app = app
        self._entries: deque[RecordedRequest] = deque(maxlen=maxlen)

    def entries(self) -> list[RecordedRequest]:
        """The recorded requests, oldest first (copies: callers cannot disturb the log)."""
        return [
            RecordedRequest(
                method=e["method"],
                path=e["path"],
                query=e["query"],
                headers=dict(e["headers"]),
                jsonrpc_methods=list(e["jsonrpc_methods"]),
            )
            for e in self._entries
        ]

    def last(self) -> RecordedRequest | None:
        """The newest recorded request, or None before the first."""
        entries = self.entries()
        return entries[-1] if entries else None

    def clear(self) -> None:
        self._entries.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == DEBUG_PATH:
            await self._serve_debug(scope, send)
            return

        entry = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=_headers_of(scope),
            jsonrpc_methods=[],
        )
        # Recorded before the app runs, so a request the app never answers (a long SSE
        # stream) is still visible to a test polling the log.
        self._entries.append(entry)

        body = bytearray()
        peeking = True

        async def peek_receive() -> Message:
            # Watch the body go by on its way to the app, without buffering it ahead of the
            # app: streaming transports must see exactly the messages uvicorn delivers.
            nonlocal peeking
            message = await receive()
            if peeking and message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if len(body) > _MAX_BODY_PEEK:
                    peeking = False
                elif not message.get("more_body", False):
                    peeking = False
                    entry["jsonrpc_methods"] = _jsonrpc_methods(bytes(body))
            return message

        await self.app(scope, peek_receive, send)

    async def _serve_debug(self, scope: Scope, send: Send) -> None:
        if scope["method"] == "DELETE":
            self.clear()
            await _respond(send, 204, b"")
            return
        if scope["method"] != "GET":
            await _respond(send, 405, b'{"error":"method not allowed"}')
            return
        entries = self.entries()
        limit = _limit_from(scope.get("query_string", b"").decode("latin-1"))
        if limit is not None:
            entries = entries[-limit:] if limit > 0 else []
        await _respond(send, 200, json.dumps({"requests": entries}).encode())


def _headers_of(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _jsonrpc_methods(body: bytes) -> list[str]:
    try:
        document: Any = json.loads(body)
    except ValueError:
        return []
    messages = document if isinstance(document, list) else [document]
    return [
        m["method"] for m in messages if isinstance(m, dict) and isinstance(m.get("method"), str)
    ]


def _limit_from(query: str) -> int | None:
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == "limit" and value.isdigit():
            return int(value)
    return None


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
