"""Build CheckRequests the way Envoy does, for tests that talk to the real gRPC server."""

from __future__ import annotations

import json
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2


def check_request(
    *,
    method: str = "POST",
    path: str = "/fininfo/mcp",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | Any = b"",
    context_extensions: dict[str, str] | None = None,
) -> external_auth_pb2.CheckRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id="req-1",
        method=method,
        path=path,
        host="gateway.test.example",
        scheme="http",
        raw_body=raw,
        header_map=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
        ),
    )
    attributes = attribute_context_pb2.AttributeContext(
        request=attribute_context_pb2.AttributeContext.Request(http=http),
        context_extensions=context_extensions or {},
    )
    return external_auth_pb2.CheckRequest(attributes=attributes)


def header_dict(options: Any) -> dict[str, str]:
    return {option.header.key: option.header.value for option in options}
