"""edge.envoy_in.to_http_request: Envoy's CheckRequest in, the service's HttpRequest out.

Requests are built by tests/support/checks.py as Envoy sends them with encode_raw_headers
(every header in ``header_map`` as ``raw_value``, the body as ``raw_body``); a test that needs
one of Envoy's other spellings changes that field of the built request.
"""

from __future__ import annotations

import pytest

from policy_service.edge.envoy_in import to_http_request
from policy_service.request.model import HttpRequest
from tests.support.checks import check_request


def test_a_check_request_becomes_the_http_request_envoy_saw() -> None:
    check = check_request(
        path="/fininfo/mcp?page=2",
        headers={"Content-Type": "application/json", "Authorization": "Bearer abc"},
        body=b'{"jsonrpc":"2.0"}',
        context_extensions={"upstream": "fininfo"},
    )
    check.attributes.source.address.socket_address.address = "10.1.2.3"

    assert to_http_request(check) == HttpRequest(
        method="POST",
        path="/fininfo/mcp",
        query="page=2",
        headers={"content-type": "application/json", "authorization": "Bearer abc"},
        repeated_headers=frozenset(),
        body=b'{"jsonrpc":"2.0"}',
        body_truncated=False,
        host="gateway.test.example",
        scheme="http",
        peer_address="10.1.2.3",
        peer_principal="",
        context_extensions={"upstream": "fininfo"},
        request_id="req-1",
    )


# --- headers -----------------------------------------------------------------------------------


def test_header_names_are_lower_cased_and_values_kept_as_sent() -> None:
    check = check_request(headers=[("MCP-Protocol-Version", "2025-06-18"), ("X-Tag", "MiXeD")])

    assert to_http_request(check).headers == {
        "mcp-protocol-version": "2025-06-18",
        "x-tag": "MiXeD",
    }


def test_a_raw_value_is_decoded_as_utf8_and_bad_bytes_replaced() -> None:
    check = check_request()
    http = check.attributes.request.http
    http.header_map.headers.add(key="x-city", raw_value="Zürich".encode())
    http.header_map.headers.add(key="x-bytes", raw_value=b"ok\xff")

    assert to_http_request(check).headers == {"x-city": "Zürich", "x-bytes": "ok\ufffd"}


def test_a_header_sent_as_value_is_read_when_it_has_no_raw_value() -> None:
    check = check_request(headers={"x-raw": "from-raw"})
    check.attributes.request.http.header_map.headers.add(key="X-Plain", value="from-value")

    assert to_http_request(check).headers == {"x-raw": "from-raw", "x-plain": "from-value"}


def test_a_repeated_header_is_joined_in_order_and_recorded_as_repeated() -> None:
    check = check_request(
        headers=[
            ("Authorization", "Bearer a"),
            ("x-once", "1"),
            ("authorization", "Bearer b"),
            ("AUTHORIZATION", "Bearer c"),
        ]
    )

    request = to_http_request(check)

    assert request.headers == {"authorization": "Bearer a,Bearer b,Bearer c", "x-once": "1"}
    assert request.repeated_headers == frozenset({"authorization"})


def test_without_a_header_map_the_headers_map_is_read_lower_cased() -> None:
    # Without encode_raw_headers Envoy fills the old map, already joined: nothing can be
    # recorded as repeated.
    check = check_request()
    check.attributes.request.http.headers["Content-Type"] = "application/json"
    check.attributes.request.http.headers["authorization"] = "Bearer a,Bearer b"

    request = to_http_request(check)

    assert request.headers == {
        "content-type": "application/json",
        "authorization": "Bearer a,Bearer b",
    }
    assert request.repeated_headers == frozenset()


def test_the_header_map_wins_over_the_headers_map_when_envoy_sends_both() -> None:
    check = check_request(headers={"x-from": "header_map"})
    check.attributes.request.http.headers["x-from"] = "headers"
    check.attributes.request.http.headers["x-only-in-headers"] = "1"

    assert to_http_request(check).headers == {"x-from": "header_map"}


# --- body --------------------------------------------------------------------------------------


def test_raw_body_is_the_body() -> None:
    check = check_request(body=b"\x00\xffbinary")

    assert to_http_request(check).body == b"\x00\xffbinary"


def test_the_string_body_is_read_as_utf8_when_there_is_no_raw_body() -> None:
    check = check_request()
    check.attributes.request.http.body = '{"q":"Zürich"}'

    assert to_http_request(check).body == '{"q":"Zürich"}'.encode()


def test_raw_body_wins_over_the_string_body() -> None:
    check = check_request(body=b"raw")
    check.attributes.request.http.body = "string"

    assert to_http_request(check).body == b"raw"


@pytest.mark.parametrize(
    ("headers", "body", "truncated"),
    [
        ({"x-envoy-auth-partial-body": "true"}, b"{}", True),
        ({"x-envoy-auth-partial-body": "false"}, b"{}", False),
        ({"content-length": "10"}, b"{}", True),  # shorter than declared: cut on the way
        ({"content-length": "2"}, b"{}", False),
        ({"content-length": "1"}, b"{}", False),
        ({"content-length": "ten"}, b"{}", False),  # not a length: nothing to compare
        ({"content-length": "\u00b2"}, b"{}", False),  # "²" is a digit to str.isdigit()
        ({"content-length": "\u0661\u0660\u0660"}, b"{}", False),  # Arabic-Indic 100
        ({"x-envoy-auth-partial-body": "true", "content-length": "2"}, b"{}", True),
        ({}, b"{}", False),
    ],
    ids=[
        "partial-body-flag",
        "flag-false",
        "shorter-than-content-length",
        "as-long-as-content-length",
        "longer-than-content-length",
        "content-length-not-a-number",
        "superscript-two-is-no-length",
        "non-ascii-digits-are-no-length",
        "flag-beats-a-matching-length",
        "neither",
    ],
)
def test_a_body_is_truncated_when_envoy_says_so_or_it_is_shorter_than_declared(
    headers: dict[str, str], body: bytes, truncated: bool
) -> None:
    check = check_request(headers=headers, body=body)

    assert to_http_request(check).body_truncated is truncated


def test_content_length_is_compared_with_the_body_in_bytes_not_characters() -> None:
    body = '{"q":"Zürich"}'  # 14 characters, 15 bytes
    check = check_request(headers={"content-length": "15"})
    check.attributes.request.http.body = body

    assert to_http_request(check).body_truncated is False


# --- path, query, route and peer -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query_field", "expected_path", "expected_query"),
    [
        ("/fininfo/mcp?a=1&b=2", "", "/fininfo/mcp", "a=1&b=2"),
        ("/fininfo/mcp?a=1?b=2", "", "/fininfo/mcp", "a=1?b=2"),  # split at the first "?"
        ("/fininfo/mcp", "", "/fininfo/mcp", ""),
        ("/fininfo/mcp", "a=1", "/fininfo/mcp", "a=1"),  # Envoy's query field, if it sets it
        ("/fininfo/mcp?from=path", "from=field", "/fininfo/mcp", "from=path"),
    ],
    ids=["query", "second-question-mark", "no-query", "query-field", "path-wins"],
)
def test_the_path_and_the_query_are_split(
    path: str, query_field: str, expected_path: str, expected_query: str
) -> None:
    check = check_request(path=path)
    check.attributes.request.http.query = query_field

    request = to_http_request(check)

    assert (request.path, request.query) == (expected_path, expected_query)


def test_context_extensions_are_copied_into_a_plain_dict() -> None:
    check = check_request(context_extensions={"upstream": "fininfo", "team": "quotes"})

    extensions = to_http_request(check).context_extensions

    assert extensions == {"upstream": "fininfo", "team": "quotes"}
    assert type(extensions) is dict  # a copy, not the proto's map container


def test_the_peers_address_and_mtls_principal_are_mapped() -> None:
    check = check_request()
    check.attributes.source.address.socket_address.address = "192.0.2.10"
    check.attributes.source.principal = "spiffe://example.org/envoy"

    request = to_http_request(check)

    assert (request.peer_address, request.peer_principal) == (
        "192.0.2.10",
        "spiffe://example.org/envoy",
    )


def test_without_a_peer_the_address_and_principal_are_empty() -> None:
    request = to_http_request(check_request())

    assert (request.peer_address, request.peer_principal) == ("", "")
