"""Test doubles and request builders shared by the test suites and the benchmark.

A settable clock, an in-memory JWKS fetcher and audit sink, span capture, the part of a
gRPC servicer context the servicer reads, and the MCP request builders tests used to copy
from file to file. They live in the package (not under ``tests/``) so every suite can use
them without path tricks. Nothing here is used by the running service.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

from policy_service.errors import KeySourceError
from policy_service.request.model import HttpRequest

__all__ = [
    "FakeClock",
    "FakeJwksFetcher",
    "MemoryAuditSink",
    "ServicerContext",
    "capture_spans",
    "mcp_request",
    "tool_call_body",
]

DEFAULT_MCP_VERSION = "2025-06-18"


class FakeClock:
    """A ``Clock`` whose time only moves when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0, monotonic: float = 1_000.0) -> None:
        self.now_value = now
        self.monotonic_value = monotonic

    def now(self) -> float:
        return self.now_value

    def monotonic(self) -> float:
        return self.monotonic_value

    def advance(self, seconds: float) -> None:
        """Move both clocks forward together, as real time would."""
        self.now_value += seconds
        self.monotonic_value += seconds


class FakeJwksFetcher:
    """A ``JwksFetcher`` serving documents from memory and counting requests.

    Set ``documents[url]`` to a JWKS (a mapping, or raw bytes for broken documents); a URL
    not present, or ``fail = True``, raises ``KeySourceError`` like an unreachable server.
    Set ``gate`` to an ``asyncio.Event`` to hold fetches until the test releases them.
    """

    def __init__(self, documents: Mapping[str, Mapping[str, Any] | bytes] | None = None) -> None:
        self.documents: dict[str, Mapping[str, Any] | bytes] = dict(documents or {})
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.calls: list[str] = []

    def count(self, url: str | None = None) -> int:
        return len(self.calls) if url is None else self.calls.count(url)

    async def fetch(self, url: str, timeout_seconds: float) -> bytes:
        self.calls.append(url)
        if self.gate is not None:
            await self.gate.wait()
        document = self.documents.get(url)
        if self.fail or document is None:
            raise KeySourceError(f"JWKS URL {url}: unreachable (fake)")
        if isinstance(document, bytes):
            return document
        return json.dumps(document).encode("utf-8")


class MemoryAuditSink:
    """An audit sink that keeps lines in memory, or fails like a full disk."""

    name = "memory"

    def __init__(self, *, failing: bool = False) -> None:
        self.lines: list[bytes] = []
        self.failing = failing

    def write(self, line: bytes) -> None:
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.lines.append(line)

    def close(self) -> None:
        pass

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


def capture_spans(sampler: Sampler | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    """A tracer provider that hands each finished span to an in-memory exporter at once."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


class ServicerContext:
    """The part of grpc.aio's ServicerContext the servicer reads: the call's metadata."""

    def __init__(self, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def tool_call_body(
    name: str = "get_quote",
    request_id: int | str = 7,
    *,
    arguments: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An MCP ``tools/call`` JSON-RPC message."""
    params: dict[str, Any] = {"name": name, "arguments": dict(arguments or {})}
    if meta is not None:
        params["_meta"] = dict(meta)
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def mcp_request(
    body: Any,
    *,
    token: str | None = None,
    version: str = DEFAULT_MCP_VERSION,
    path: str = "/fininfo/mcp",
    headers: Mapping[str, str] | None = None,
    query: str = "",
) -> HttpRequest:
    """An MCP POST as the pipeline sees it, with a bearer token when one is given."""
    all_headers = {"content-type": "application/json", "mcp-protocol-version": version}
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    return HttpRequest(
        method="POST", path=path, query=query, headers=all_headers, body=json.dumps(body).encode()
    )
