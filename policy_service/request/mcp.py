"""What an MCP request calls: the JSON-RPC messages of a Streamable HTTP request, normalized.

``parse_mcp`` turns an ``HttpRequest`` into an ``McpRequest`` (one ``JsonRpcCall`` per
message, each naming the tool, resource or prompt it targets) or a ``Malformed`` value.
It is a pure function: no I/O, no policy. The rules it enforces come from the MCP spec
(``basic/transports`` and ``basic/index`` of each revision) and are cited where they apply.

Fail closed: whatever the gateway cannot read unambiguously (a truncated body, a batch where
batches are not allowed, a header that disagrees with the body) is refused, because the
server behind us might read it differently from how we authorized it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from policy_service.request.jsonbody import parse_json, readable_id
from policy_service.request.model import (
    CallKind,
    HttpRequest,
    JsonRpcCall,
    JsonRpcId,
    Malformed,
    McpRequest,
)

KNOWN_MCP_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")
# 2025-06-18 transports: without an MCP-Protocol-Version header (and no other way to tell)
# "the server SHOULD assume protocol version 2025-03-26".
DEFAULT_MCP_VERSION = "2025-03-26"
# JSON-RPC batching existed only in 2025-03-26 (removed by 2025-06-18, PR #416); 2024-11-05
# is included because base JSON-RPC 2.0 allows batches and that revision did not forbid them.
BATCH_VERSIONS = frozenset({"2024-11-05", "2025-03-26"})
# From this revision on, Mcp-Method / Mcp-Name are REQUIRED on POSTs (streamable-http.mdx,
# "Standard Request Headers"). Versions are ISO dates, so string order is release order.
MIRRORED_HEADERS_VERSION = "2026-07-28"

# Tool names "SHOULD be between 1 and 128 characters" (2025-11-25 server/tools.mdx); twice
# that leaves room for servers that ignore the SHOULD while keeping megabyte names out of
# logs, metrics and policy matching.
MAX_NAME_LENGTH = 256
MAX_URI_LENGTH = 8192
MAX_METHOD_LENGTH = 256
MAX_VERSION_LENGTH = 64

INVALID_REQUEST = -32600  # JSON-RPC 2.0 section 5.1
INVALID_PARAMS = -32602  # JSON-RPC 2.0 section 5.1; MCP uses it for unknown tools/prompts too
HEADER_MISMATCH = -32020  # MCP 2026-07-28 HeaderMismatch (missing, malformed or mismatched)

_BODYLESS_METHODS = frozenset({"GET", "DELETE"})  # SSE stream and session end
# Methods whose target is params.name, and those whose target is params.uri (spec 2.6 table).
_NAME_TARGETS: Mapping[str, CallKind] = {
    "tools/call": CallKind.TOOL,
    "prompts/get": CallKind.PROMPT,
}
_URI_TARGETS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
_COMPLETION = "completion/complete"
# "Mcp-Name ... Required For: tools/call, resources/read, prompts/get".
_NAME_HEADER_REQUIRED = frozenset({"tools/call", "resources/read", "prompts/get"})
_META_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
_MAX_TRACEPARENT_LENGTH = 128  # version-traceid-parentid-flags is 55 characters
# Value Encoding: "The prefix =?base64? and suffix ?= ... are case-sensitive".
_SENTINEL_PREFIX = "=?base64?"
_SENTINEL_SUFFIX = "?="
_MIRRORED_HEADERS = ("mcp-method", "mcp-name")
_UNKNOWN_VERSION_MESSAGE = "unsupported MCP-Protocol-Version header; supported: " + ", ".join(
    KNOWN_MCP_VERSIONS
)


def _invalid(reason: str, message: str, request_id: JsonRpcId = None) -> Malformed:
    return Malformed(reason, message, INVALID_REQUEST, request_id)


def _bad_params(message: str, request_id: JsonRpcId) -> Malformed:
    return Malformed("invalid_params", message, INVALID_PARAMS, request_id)


def _header_error(reason: str, message: str, request_id: JsonRpcId) -> Malformed:
    return Malformed(reason, message, HEADER_MISMATCH, request_id)


def parse_mcp(request: HttpRequest) -> McpRequest | Malformed:
    """Parse one MCP HTTP request into the calls it makes, or the reason it is refused."""
    if request.body_truncated:
        # Envoy cut the body at its buffer limit: the tool name may be past the cut.
        return _invalid("body_truncated", "request body was truncated before authorization")
    headers = request.headers
    if "mcp-session-id" in request.repeated_headers:
        # One request, one session: with two ids the gateway would check one and the
        # upstream might serve the other (another principal's).
        return _invalid("ambiguous_session", "Mcp-Session-Id header is repeated")
    session_id = headers.get("mcp-session-id") or None
    header_version = headers.get("mcp-protocol-version")
    method = request.method.upper()

    if method in _BODYLESS_METHODS:
        if header_version is not None and header_version not in KNOWN_MCP_VERSIONS:
            return _invalid("unknown_protocol_version", _UNKNOWN_VERSION_MESSAGE)
        return McpRequest(header_version or DEFAULT_MCP_VERSION, (), session_id=session_id)
    if method != "POST":
        # Streamable HTTP defines only POST, GET and DELETE on the MCP endpoint.
        return Malformed(
            "method_not_allowed", "MCP endpoint accepts POST, GET and DELETE", http_status=405
        )

    doc = parse_json(request.body)
    # "If the server receives a request with an invalid or unsupported MCP-Protocol-Version,
    # it MUST respond with 400 Bad Request" (2025-06-18 transports).
    if header_version is not None and header_version not in KNOWN_MCP_VERSIONS:
        return _invalid("unknown_protocol_version", _UNKNOWN_VERSION_MESSAGE, readable_id(doc))
    if isinstance(doc, Malformed):
        return doc
    version = header_version or _version_from_body(doc)

    if isinstance(doc, list):
        if version not in BATCH_VERSIONS:
            return _invalid("batch_not_allowed", f"JSON-RPC batches are not allowed in {version}")
        if not doc:
            # JSON-RPC 2.0 section 6: an empty array is an Invalid Request.
            return _invalid("empty_batch", "JSON-RPC batch is empty")
        messages: list[Any] = doc
    elif isinstance(doc, dict):
        messages = [doc]
    else:
        return _invalid("invalid_jsonrpc", "request body must be a JSON-RPC message object")

    calls: list[JsonRpcCall] = []
    for message in messages:  # every element: authorizing only batch[0] would be a bypass
        call = _parse_message(message)
        if isinstance(call, Malformed):
            return call
        problem = _check_mirrored_headers(request, header_version, message, call)
        if problem is not None:
            return problem
        calls.append(call)
    return McpRequest(
        version,
        tuple(calls),
        is_batch=isinstance(doc, list),
        session_id=session_id,
        trace_parent=_trace_parent(messages[0]),
    )


def _trace_parent(message: Any) -> str | None:
    """``params._meta.traceparent``: the agent's own trace context, which the Check span links.

    Only a string of traceparent size is kept; the propagator validates its format.
    """
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    value = meta.get("traceparent") if isinstance(meta, dict) else None
    return value if isinstance(value, str) and len(value) <= _MAX_TRACEPARENT_LENGTH else None


def _version_from_body(doc: Any) -> str:
    """Without a header, an ``initialize`` body names the version the client proposes.

    It is not validated: negotiating (or refusing) the version is the server's job.
    """
    if isinstance(doc, dict) and doc.get("method") == "initialize":
        params = doc.get("params")
        if isinstance(params, dict):
            proposed = params.get("protocolVersion")
            if isinstance(proposed, str) and 0 < len(proposed) <= MAX_VERSION_LENGTH:
                return proposed
    return DEFAULT_MCP_VERSION


def _parse_message(message: Any) -> JsonRpcCall | Malformed:
    """One JSON-RPC request, notification or (client-posted) response."""
    if not isinstance(message, dict):
        return _invalid("invalid_jsonrpc", "each JSON-RPC message must be an object")
    request_id = readable_id(message)
    if message.get("jsonrpc") != "2.0":
        return _invalid("invalid_jsonrpc", 'jsonrpc must be "2.0"', request_id)
    # MCP basic/index: "Requests MUST include a string or integer ID", "the ID MUST NOT be
    # null", "Notifications MUST NOT include an ID".
    if "id" in message and request_id is None:
        return _invalid("invalid_jsonrpc", "id must be a string or an integer, never null")
    if "method" not in message:
        # A client answers server-initiated requests (sampling, elicitation, roots/list,
        # ping) by POSTing a response: it has an id and exactly one of result / error.
        if request_id is None or ("result" in message) == ("error" in message):
            return _invalid(
                "invalid_jsonrpc", "message has no method and is not a response", request_id
            )
        return JsonRpcCall(CallKind.RESPONSE, None, None, request_id)

    method = message["method"]
    if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_LENGTH:
        return _invalid(
            "invalid_jsonrpc",
            f"method must be a string of 1 to {MAX_METHOD_LENGTH} characters",
            request_id,
        )
    if "result" in message or "error" in message:
        # Half request, half response: servers would disagree about which it is.
        return _invalid("invalid_jsonrpc", "a request cannot carry result or error", request_id)
    params = message.get("params", {})
    if not isinstance(params, dict):
        # JSON-RPC allows by-position arrays; every MCP params type is an object.
        return _bad_params("params must be an object", request_id)

    kind = _NAME_TARGETS.get(method)
    if kind is not None:
        name = _target_string(params, "name", MAX_NAME_LENGTH, "params.name", request_id)
        if isinstance(name, Malformed):
            return name
        arguments = params.get("arguments")
        # Accept an explicit null as "no arguments" (some serializers emit it); anything
        # else that is not an object would be read differently by each server.
        if arguments is not None and not isinstance(arguments, dict):
            return _bad_params("params.arguments must be an object", request_id)
        return JsonRpcCall(kind, method, name, request_id, arguments)
    if method in _URI_TARGETS:
        uri = _target_string(params, "uri", MAX_URI_LENGTH, "params.uri", request_id)
        if isinstance(uri, Malformed):
            return uri
        return JsonRpcCall(CallKind.RESOURCE, method, uri, request_id)
    if method == _COMPLETION:
        return _parse_completion(params, request_id)
    return JsonRpcCall(CallKind.METHOD, method, None, request_id)


def _target_string(
    params: Mapping[str, Any], key: str, max_length: int, label: str, request_id: JsonRpcId
) -> str | Malformed:
    value = params.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        return _bad_params(
            f"{label} is required and must be a string of 1 to {max_length} characters",
            request_id,
        )
    return value


def _parse_completion(params: Mapping[str, Any], request_id: JsonRpcId) -> JsonRpcCall | Malformed:
    """``completion/complete`` reveals a prompt or resource template: authorize it as one."""
    ref = params.get("ref")
    ref_type = ref.get("type") if isinstance(ref, dict) else None
    if isinstance(ref, dict) and ref_type == "ref/prompt":
        name = _target_string(ref, "name", MAX_NAME_LENGTH, "params.ref.name", request_id)
        if isinstance(name, Malformed):
            return name
        return JsonRpcCall(CallKind.PROMPT, _COMPLETION, name, request_id)
    if isinstance(ref, dict) and ref_type == "ref/resource":
        uri = _target_string(ref, "uri", MAX_URI_LENGTH, "params.ref.uri", request_id)
        if isinstance(uri, Malformed):
            return uri
        return JsonRpcCall(CallKind.RESOURCE, _COMPLETION, uri, request_id)
    return _bad_params(
        'params.ref must be an object of type "ref/prompt" or "ref/resource"', request_id
    )


def _check_mirrored_headers(
    request: HttpRequest, header_version: str | None, message: Mapping[str, Any], call: JsonRpcCall
) -> Malformed | None:
    """Mcp-Method / Mcp-Name / MCP-Protocol-Version must agree with the body.

    2026-07-28 streamable-http.mdx, "Server Validation": servers "MUST reject requests where
    the values specified in the headers do not match the corresponding values in the
    request body", so a load balancer routing on ``Mcp-Name: harmless`` cannot be fooled
    into forwarding ``params.name = "delete_all"``. Present headers are checked in every
    version; they are required only when the *header* says 2026-07-28 or later (a version
    proposed in an ``initialize`` body is the server's to negotiate).
    """
    headers = request.headers
    request_id = call.request_id
    required = header_version is not None and header_version >= MIRRORED_HEADERS_VERSION
    for header in _MIRRORED_HEADERS:
        if header in request.repeated_headers:
            return _header_error("header_mismatch", f"{header} header is repeated", request_id)

    mcp_method = headers.get("mcp-method")
    if mcp_method is None:
        if required:
            return _header_error(
                "missing_mcp_header",
                f"Mcp-Method header is required in {header_version}",
                request_id,
            )
    elif mcp_method != call.method:  # values are case-sensitive; no sentinel for Mcp-Method
        return _header_error(
            "header_mismatch", "Mcp-Method header does not match the body's method", request_id
        )

    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    mcp_name = headers.get("mcp-name")
    if mcp_name is None:
        if required and call.method in _NAME_HEADER_REQUIRED:
            return _header_error(
                "missing_mcp_header", f"Mcp-Name header is required for {call.method}", request_id
            )
    elif _decode_sentinel(mcp_name) != _mirror_source(call.method, params):
        return _header_error(
            "header_mismatch", "Mcp-Name header does not match params.name / params.uri", request_id
        )

    # "The header value MUST match the io.modelcontextprotocol/protocolVersion field carried
    # in the request body's _meta" (2026-07-28); older clients never send that key.
    meta = params.get("_meta")
    if (
        header_version is not None
        and isinstance(meta, dict)
        and _META_VERSION_KEY in meta
        and meta[_META_VERSION_KEY] != header_version
    ):
        return _header_error(
            "header_mismatch",
            "MCP-Protocol-Version header does not match params._meta protocolVersion",
            request_id,
        )
    return None


def _mirror_source(method: str | None, params: Mapping[str, Any]) -> str | None:
    """The body value ``Mcp-Name`` mirrors: params.uri for resources, else params.name."""
    if method in _URI_TARGETS:
        value = params.get("uri")
    elif method in _NAME_TARGETS or "name" in params:
        value = params.get("name")
    else:
        value = params.get("uri")
    return value if isinstance(value, str) else None


def _decode_sentinel(value: str) -> str | None:
    """Decode ``=?base64?{value}?=`` (UTF-8 inside); other values are compared as sent.

    None means "cannot match anything": invalid base64 or UTF-8 in a sentinel value.
    """
    if (
        len(value) < len(_SENTINEL_PREFIX) + len(_SENTINEL_SUFFIX)
        or not value.startswith(_SENTINEL_PREFIX)
        or not value.endswith(_SENTINEL_SUFFIX)
    ):
        return value
    encoded = value[len(_SENTINEL_PREFIX) : -len(_SENTINEL_SUFFIX)]
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
