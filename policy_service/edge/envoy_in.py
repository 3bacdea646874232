"""CheckRequest -> HttpRequest: the only place that knows the shape of Envoy's request."""

from __future__ import annotations

from envoy.service.auth.v3 import external_auth_pb2

from policy_service.request.model import HttpRequest

_PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


def to_http_request(check: external_auth_pb2.CheckRequest) -> HttpRequest:
    attributes = check.attributes
    http = attributes.request.http
    headers: dict[str, str] = {}
    repeated: set[str] = set()
    if http.header_map.headers:
        # encode_raw_headers: every occurrence arrives separately, so repeated headers
        # (two Authorization headers, say) are visible rather than silently joined.
        for entry in http.header_map.headers:
            name = entry.key.lower()
            value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
            if name in headers:
                repeated.add(name)
                headers[name] = f"{headers[name]},{value}"
            else:
                headers[name] = value
    else:
        headers = {name.lower(): value for name, value in http.headers.items()}

    path, _, query = http.path.partition("?")
    body = http.raw_body or http.body.encode()
    return HttpRequest(
        method=http.method,
        path=path,
        query=query or http.query,
        headers=headers,
        repeated_headers=frozenset(repeated),
        body=body,
        body_truncated=_is_truncated(headers, len(body)),
        host=http.host,
        scheme=http.scheme,
        peer_address=attributes.source.address.socket_address.address,
        peer_principal=attributes.source.principal,
        context_extensions=dict(attributes.context_extensions),
        request_id=http.id,
    )


def _is_truncated(headers: dict[str, str], body_length: int) -> bool:
    if headers.get(_PARTIAL_BODY_HEADER) == "true":
        return True
    declared = headers.get("content-length")
    # A body shorter than its declared length was cut somewhere on the way: fail closed.
    # ASCII digits only: str.isdigit() also takes a superscript two (int() then raises) and
    # Arabic-Indic digits.
    return (
        declared is not None
        and declared.isascii()
        and declared.isdigit()
        and int(declared) > body_length
    )
