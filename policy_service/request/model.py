"""The request model: what Envoy asked about, and what the caller is trying to call.

``HttpRequest`` is built once from Envoy's CheckRequest by ``edge.envoy_in``; nothing past
that point knows the proto shape. Parsing the body turns it into an ``McpRequest``, an
``A2aRequest`` or a ``Malformed`` value (bad input is a value, not an exception).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JsonRpcId = str | int | None


class UpstreamProtocol(StrEnum):
    MCP = "mcp"
    A2A = "a2a"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request as Envoy saw it. Header names are lower-cased.

    Repeated headers are joined with "," in ``headers`` (as HTTP allows) and their names
    are listed in ``repeated_headers`` so credential checks can refuse ambiguity.
    """

    method: str
    path: str  # without the query string
    query: str = ""  # raw, without the leading "?"
    headers: Mapping[str, str] = field(default_factory=dict)
    repeated_headers: frozenset[str] = frozenset()
    body: bytes = b""
    body_truncated: bool = False
    host: str = ""
    scheme: str = "http"
    peer_address: str = ""
    peer_principal: str = ""  # the downstream's mTLS identity (URI or DNS SAN), "" without mTLS
    context_extensions: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""


class CallKind(StrEnum):
    """What an MCP JSON-RPC message targets, for the policy to match on."""

    TOOL = "tool"  # tools/call -> params.name
    RESOURCE = "resource"  # resources/read, subscribe, unsubscribe -> params.uri
    PROMPT = "prompt"  # prompts/get -> params.name
    METHOD = "method"  # every other method (initialize, tools/list, ping, notifications/...)
    RESPONSE = "response"  # a JSON-RPC response the client posts back (no method)


@dataclass(frozen=True, slots=True)
class JsonRpcCall:
    """One JSON-RPC message of an MCP POST body (a batch has several)."""

    kind: CallKind
    method: str | None  # None only for RESPONSE
    name: str | None  # tool name, resource URI or prompt name; None for METHOD / RESPONSE
    request_id: JsonRpcId  # None for notifications
    arguments: Mapping[str, Any] | None = None  # tools/call and prompts/get arguments

    @property
    def is_notification(self) -> bool:
        return self.method is not None and self.request_id is None


@dataclass(frozen=True, slots=True)
class McpRequest:
    """An MCP request. ``calls`` is empty for GET (SSE stream) and DELETE (session end)."""

    protocol_version: str
    calls: tuple[JsonRpcCall, ...]
    is_batch: bool = False
    session_id: str | None = None
    trace_parent: str | None = None  # params._meta.traceparent of the first message

    @property
    def first_id(self) -> JsonRpcId:
        """The id to echo in an error body (the first element's, for a batch)."""
        return self.calls[0].request_id if self.calls else None


class A2aBinding(StrEnum):
    JSONRPC = "jsonrpc"
    REST = "rest"
    GRPC = "grpc"


@dataclass(frozen=True, slots=True)
class A2aRequest:
    """An A2A operation, its method normalized to its v1.0 name.

    ``message/send`` (v0.3) becomes ``SendMessage``; v1.0 names pass through unchanged.
    """

    method: str
    binding: A2aBinding
    request_id: JsonRpcId = None
    version: str = "0.3"  # A2A-Version; absent means 0.3 (A2A v1.0 section 3.6)
    push_urls: tuple[str, ...] = ()  # webhook URLs the request hands the agent


@dataclass(frozen=True, slots=True)
class Malformed:
    """The request cannot be understood well enough to authorize it: always a denial.

    ``reason`` is a short snake_case code (metric label, log field, ``data.reason``);
    ``message`` is one sentence for humans and never quotes token or body content at length.
    """

    reason: str
    message: str
    jsonrpc_code: int = -32600
    request_id: JsonRpcId = None
    http_status: int = 400


ParsedRequest = McpRequest | A2aRequest | Malformed


class TargetKind(StrEnum):
    """What a rule or a limit matches a call on."""

    TOOL = "tool"
    RESOURCE = "resource"
    PROMPT = "prompt"
    METHOD = "method"  # an MCP method without a named target
    A2A_METHOD = "a2a_method"


_TARGET_KIND = {
    CallKind.TOOL: TargetKind.TOOL,
    CallKind.RESOURCE: TargetKind.RESOURCE,
    CallKind.PROMPT: TargetKind.PROMPT,
    CallKind.METHOD: TargetKind.METHOD,
}


@dataclass(frozen=True, slots=True)
class CallTarget:
    """One call the policy decides on: an MCP message (not a response) or an A2A operation."""

    kind: TargetKind
    name: str  # tool name, resource URI, prompt name, or the method for METHOD / A2A_METHOD
    method: str
    request_id: JsonRpcId
    arguments: Mapping[str, Any] | None = None  # tools/call and prompts/get arguments


def call_targets(parsed: McpRequest | A2aRequest | None) -> tuple[CallTarget, ...]:
    """The calls in a request, in order; empty for streams, deletes and plain HTTP."""
    if isinstance(parsed, A2aRequest):
        return (CallTarget(TargetKind.A2A_METHOD, parsed.method, parsed.method, parsed.request_id),)
    if isinstance(parsed, McpRequest):
        return tuple(
            CallTarget(
                _TARGET_KIND[call.kind],
                (call.method or "") if call.kind is CallKind.METHOD else (call.name or ""),
                call.method or "",
                call.request_id,
                call.arguments,
            )
            for call in parsed.calls
            if call.kind is not CallKind.RESPONSE
        )
    return ()


def request_id_of(parsed: McpRequest | A2aRequest | None) -> JsonRpcId:
    """The JSON-RPC id to echo in a denial (the first element's, for an MCP batch)."""
    if isinstance(parsed, McpRequest):
        return parsed.first_id
    if isinstance(parsed, A2aRequest):
        return parsed.request_id
    return None
