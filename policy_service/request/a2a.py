"""What an A2A request calls: one operation, normalized to its v1.0 name, for any binding.

A2A v1.0 section 5.1 requires equivalent authentication on every binding an agent offers,
so the policy sees one vocabulary: JSON-RPC (v0.2/v0.3 slash names and v1.0 PascalCase),
REST (v1.0 paths with an optional ``/{tenant}`` prefix, v0.3 ``/v1/...`` paths) and gRPC
(``/lf.a2a.v1.A2AService/<Method>``, v0.3 ``/a2a.v1.A2AService/<Method>``) all map to the
names in ``A2A_METHODS``. Pure functions, no I/O.

Unknown JSON-RPC and gRPC method names are passed through unchanged: the policy's default
deny handles them, and the parser does not need to know every future method. A request
that is none of the three bindings is ``unknown_a2a_operation`` (404).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from policy_service.request.jsonbody import parse_json, readable_id
from policy_service.request.model import (
    A2aBinding,
    A2aRequest,
    HttpRequest,
    JsonRpcId,
    Malformed,
)
from policy_service.request.push_urls import (
    CARRIES_PUSH_URL,
    push_urls_in_grpc,
    push_urls_in_json,
)

A2A_METHODS = frozenset(
    {
        "SendMessage",
        "SendStreamingMessage",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "SubscribeToTask",
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
        "GetExtendedAgentCard",
    }
)
# v1.0 section 3.6: "Agents MUST interpret empty value as 0.3 version".
DEFAULT_A2A_VERSION = "0.3"
# Public Agent Card locations: v0.3/v1.0 agent-card.json, v0.2.x agent.json.
AGENT_CARD_PATHS = frozenset({"/.well-known/agent-card.json", "/.well-known/agent.json"})
MAX_METHOD_LENGTH = 256

INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
VERSION_NOT_SUPPORTED = -32009  # A2A VersionNotSupportedError (v1.0 section 5.4)

# v0.2/v0.3 JSON-RPC names -> v1.0 (v1.0 section 5.3 "Method Mapping Reference").
_JSONRPC_ALIASES: Mapping[str, str] = {
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/list": "ListTasks",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
    "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
    "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
    "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard",  # v0.3
    "agent/authenticatedExtendedCard": "GetExtendedAgentCard",  # v0.2.x
}
# v0.3 gRPC service (package a2a.v1) names that v1.0 renamed.
_GRPC_ALIASES: Mapping[str, str] = {
    "TaskSubscription": "SubscribeToTask",
    "GetAgentCard": "GetExtendedAgentCard",
    "ListTaskPushNotificationConfig": "ListTaskPushNotificationConfigs",
}
_GRPC_PATH = re.compile(r"/(?:lf\.a2a\.v1|a2a\.v1)\.A2AService/([A-Za-z][A-Za-z0-9_]{0,127})")
_VERSION = re.compile(r"\d{1,3}\.\d{1,3}(?:\.\d{1,3})?")
_VERSION_PARAM = "a2a-version"

# REST routes from the a2a.proto google.api.http bindings, as path segments below the
# (optional) tenant. "{id}" is one task or config id; ":verb" is a custom-method suffix
# on the preceding id segment. Matching order follows the reference SDK router: routes
# without a tenant are tried first.
_Route = tuple[tuple[str, ...], str, str]  # (segments, HTTP method, operation)
_REST_ROUTES: tuple[_Route, ...] = (
    (("message:send",), "POST", "SendMessage"),
    (("message:stream",), "POST", "SendStreamingMessage"),
    (("tasks",), "GET", "ListTasks"),
    (("tasks", "{id}"), "GET", "GetTask"),
    (("tasks", "{id}:cancel"), "POST", "CancelTask"),
    # The v1.0 spec text says POST, the normative proto says GET: accept both.
    (("tasks", "{id}:subscribe"), "GET", "SubscribeToTask"),
    (("tasks", "{id}:subscribe"), "POST", "SubscribeToTask"),
    (("tasks", "{id}", "pushNotificationConfigs"), "POST", "CreateTaskPushNotificationConfig"),
    (("tasks", "{id}", "pushNotificationConfigs"), "GET", "ListTaskPushNotificationConfigs"),
    (("tasks", "{id}", "pushNotificationConfigs", "{id}"), "GET", "GetTaskPushNotificationConfig"),
    (
        ("tasks", "{id}", "pushNotificationConfigs", "{id}"),
        "DELETE",
        "DeleteTaskPushNotificationConfig",
    ),
    (("extendedAgentCard",), "GET", "GetExtendedAgentCard"),
)
_V03_CARD_SEGMENTS = ("v1", "card")  # v0.3 GetAgentCard: GET /v1/card
_CUSTOM_VERBS = frozenset({"cancel", "subscribe"})

_Operation = tuple[str, A2aBinding, JsonRpcId, tuple[str, ...]]  # ..., push webhook URLs


def is_agent_card_path(subpath: str) -> bool:
    """True for the public Agent Card paths (serve them without credentials, GET only)."""
    return subpath in AGENT_CARD_PATHS


def _unknown(request_id: JsonRpcId = None) -> Malformed:
    return Malformed(
        "unknown_a2a_operation",
        "request does not match any A2A operation",
        METHOD_NOT_FOUND,
        request_id,
        http_status=404,
    )


def parse_a2a(request: HttpRequest, subpath: str) -> A2aRequest | Malformed:
    """Parse one A2A request; ``subpath`` is the path below the agent's route prefix."""
    version = _requested_version(request)
    method = request.method.upper()
    if request.headers.get("content-type", "").lower().startswith("application/grpc"):
        operation = _parse_grpc(request, method, subpath)
    else:
        rest = _match_rest(method, subpath)
        if rest is not None:
            operation = _rest_operation(request, rest)
        elif method == "POST":
            operation = _parse_jsonrpc(request)
        else:
            operation = _unknown()
    if isinstance(operation, Malformed):
        return operation
    name, binding, request_id, push_urls = operation
    if version is None:
        return Malformed(
            "invalid_a2a_version",
            "A2A-Version must look like 1.0 and be given once",
            VERSION_NOT_SUPPORTED,
            request_id,
        )
    return A2aRequest(name, binding, request_id, version, push_urls)


def _rest_operation(request: HttpRequest, name: str) -> _Operation | Malformed:
    if name not in CARRIES_PUSH_URL or not (
        request.body.strip(b" \t\r\n") or request.body_truncated
    ):
        return (name, A2aBinding.REST, None, ())  # no body, no webhook
    # Its body may name a webhook the agent will call: read it as strictly as JSON-RPC.
    if request.body_truncated:
        return _truncated()
    doc = parse_json(request.body)
    if isinstance(doc, Malformed):
        return doc
    urls = push_urls_in_json(name, doc)
    return urls if isinstance(urls, Malformed) else (name, A2aBinding.REST, None, urls)


def _truncated(request_id: JsonRpcId = None) -> Malformed:
    return Malformed(
        "body_truncated",
        "request body was truncated before authorization",
        INVALID_REQUEST,
        request_id,
    )


def _requested_version(request: HttpRequest) -> str | None:
    """``A2A-Version`` header, else query parameter, else 0.3; None when unusable.

    Repeated headers arrive joined with "," and so fail the pattern: ambiguity is refused.
    """
    value = request.headers.get(_VERSION_PARAM)
    if value is None and _VERSION_PARAM in request.query.lower():
        values = {
            v
            for k, v in parse_qsl(request.query, keep_blank_values=True)
            if k.lower() == _VERSION_PARAM
        }
        if len(values) > 1:
            return None
        value = values.pop() if values else None
    if not value:
        return DEFAULT_A2A_VERSION
    return value if _VERSION.fullmatch(value) else None


def _parse_grpc(request: HttpRequest, method: str, subpath: str) -> _Operation | Malformed:
    # gRPC paths are absolute (/package.Service/Method), whatever prefix Envoy routes on.
    match = _GRPC_PATH.fullmatch(request.path) or _GRPC_PATH.fullmatch(subpath)
    if match is None or method != "POST":
        return _unknown()
    name = _GRPC_ALIASES.get(match.group(1), match.group(1))
    if name in CARRIES_PUSH_URL and request.body_truncated:
        return _truncated()
    urls = push_urls_in_grpc(name, request.body)
    return urls if isinstance(urls, Malformed) else (name, A2aBinding.GRPC, None, urls)


def _match_rest(method: str, subpath: str) -> str | None:
    """The v1.0 operation a REST request maps to, or None."""
    # An encoded "/" splits differently in servers that decode before routing and those
    # that do not (e.g. /tasks/x%2FpushNotificationConfigs): refuse to guess.
    if "%2f" in subpath.lower():
        return None
    # Servers route on the decoded path (Starlette does), so match what they will see.
    segments = tuple(unquote(subpath).split("/"))
    if len(segments) < 2 or segments[0] != "":
        return None
    segments = segments[1:]
    found = _match_segments(method, segments)
    if found is None and len(segments) > 1 and segments[0]:
        # "/{tenant}/..." (v1.0) and "/v1/..." (v0.3) have the same shape below the prefix.
        found = _match_segments(method, segments[1:])
    if found is None and method == "GET" and segments == _V03_CARD_SEGMENTS:
        found = "GetExtendedAgentCard"
    return found


def _match_segments(method: str, segments: tuple[str, ...]) -> str | None:
    for pattern, verb, operation in _REST_ROUTES:
        if (
            verb == method
            and len(pattern) == len(segments)
            and all(_segment_matches(p, s) for p, s in zip(pattern, segments, strict=True))
        ):
            return operation
    return None


def _segment_matches(pattern: str, segment: str) -> bool:
    if not segment:
        return False
    if not pattern.startswith("{id}"):
        return pattern == segment
    resource_id, colon, suffix = segment.rpartition(":")
    if pattern == "{id}":
        # "abc:cancel" is CancelTask's path, never GetTask of a task named "abc:cancel";
        # ids with other colons ("urn:uuid:...") are plain ids.
        return not (colon and suffix in _CUSTOM_VERBS)
    return bool(resource_id) and pattern == "{id}:" + suffix


def _parse_jsonrpc(request: HttpRequest) -> _Operation | Malformed:
    if request.body_truncated:
        return _truncated()
    doc: Any = parse_json(request.body)
    if isinstance(doc, Malformed):
        return doc
    if isinstance(doc, list):
        # A2A defines one operation per HTTP request; a batch would hide the others.
        return Malformed("batch_not_allowed", "JSON-RPC batches are not allowed", INVALID_REQUEST)
    if not isinstance(doc, dict):
        return Malformed("invalid_jsonrpc", "body must be a JSON-RPC request object")
    if "method" not in doc and "jsonrpc" not in doc:
        return _unknown()  # some JSON, but neither REST nor JSON-RPC
    request_id = readable_id(doc)
    if doc.get("jsonrpc") != "2.0":
        return Malformed("invalid_jsonrpc", 'jsonrpc must be "2.0"', INVALID_REQUEST, request_id)
    # JSON-RPC 2.0 section 4: id is a String, Number (no fraction) or Null.
    if doc.get("id") is not None and request_id is None:
        return Malformed("invalid_jsonrpc", "id must be a string, an integer or null")
    name = doc.get("method")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_METHOD_LENGTH:
        return Malformed(
            "invalid_jsonrpc",
            f"method must be a string of 1 to {MAX_METHOD_LENGTH} characters",
            INVALID_REQUEST,
            request_id,
        )
    if "params" in doc and not isinstance(doc["params"], dict):
        return Malformed("invalid_params", "params must be an object", INVALID_PARAMS, request_id)
    name = _JSONRPC_ALIASES.get(name, name)
    urls = push_urls_in_json(name, doc.get("params"))
    if isinstance(urls, Malformed):
        return Malformed(urls.reason, urls.message, INVALID_PARAMS, request_id)
    return (name, A2aBinding.JSONRPC, request_id, urls)
