"""The JSON-RPC parser under generated input, and read the way other parsers would read it.

Property: whatever the bytes, ``parse_mcp`` returns a request or a refusal, never raises.
Differential: a body is also read case-insensitively (Go's encoding/json), first key wins
and last key wins; the gateway must refuse the body, or see the same call under every
reading. A body the gateway authorizes as ``get_quote`` and an upstream runs as
``place_trade`` is exactly the bypass this exists to find.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service.request.mcp import parse_mcp
from policy_service.request.model import HttpRequest, Malformed, McpRequest

HEADERS = {"content-type": "application/json", "mcp-protocol-version": "2025-06-18"}
SETTINGS = settings(max_examples=400, deadline=None)


def post(body: bytes, headers: dict[str, str] | None = None) -> HttpRequest:
    return HttpRequest(method="POST", path="/fininfo/mcp", headers=headers or HEADERS, body=body)


# -- raw bytes and arbitrary JSON ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_or_a_refusal(body: bytes) -> None:
    result = parse_mcp(post(body))
    assert isinstance(result, McpRequest | Malformed)


@SETTINGS
@given(json_values)
def test_any_json_document_gives_a_request_or_a_refusal(document: Any) -> None:
    result = parse_mcp(post(json.dumps(document).encode()))
    assert isinstance(result, McpRequest | Malformed)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["mcp-protocol-version", "mcp-method", "mcp-name", "mcp-session-id"]),
        st.text(max_size=30),
    ),
    json_values,
)
def test_any_mcp_headers_give_a_request_or_a_refusal(
    headers: dict[str, str], document: Any
) -> None:
    result = parse_mcp(post(json.dumps(document).encode(), {**HEADERS, **headers}))
    assert isinstance(result, McpRequest | Malformed)


# -- the differential: one body, four readers ------------------------------------------------

# Member names with their case variants and near-duplicates: what lets readers disagree.
method_keys = st.sampled_from(["method", "Method", "METHOD", "method"])
name_keys = st.sampled_from(["name", "Name", "NAME", "name", "\u212aname"])
tools = st.sampled_from(["get_quote", "place_trade"])
methods = st.sampled_from(["tools/call", "tools/list", "prompts/get"])


def pairs_text(pairs: list[tuple[str, str]]) -> str:
    """A JSON object written member by member, duplicates and all."""
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in pairs) + "}"


@st.composite
def ambiguous_bodies(draw: st.DrawFn) -> str:
    params: list[tuple[str, str]] = [
        (draw(name_keys), json.dumps(draw(tools))) for _ in range(draw(st.integers(1, 3)))
    ]
    params.append(("arguments", "{}"))
    members = [("jsonrpc", '"2.0"'), ("id", "1")]
    members += [
        (draw(method_keys), json.dumps(draw(methods))) for _ in range(draw(st.integers(1, 3)))
    ]
    members += [("params", pairs_text(draw(st.permutations(params))))]
    if draw(st.booleans()):
        members.append(("Params", pairs_text([("name", json.dumps(draw(tools)))])))
    return pairs_text(draw(st.permutations(members)))


def first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def last_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(pairs)


def folded_last_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Go's encoding/json matches names case-insensitively (Unicode simple folding) and the
    # last match wins; casefold() is at least as generous.
    return {key.casefold(): value for key, value in pairs}


NAMED_METHODS = frozenset({"tools/call", "prompts/get"})
READERS = {"first-wins": first_wins, "last-wins": last_wins, "case-folded": folded_last_wins}


def call_as_read(text: str, reader: Any) -> tuple[Any, Any]:
    document = json.loads(text, object_pairs_hook=reader)
    params = document.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return document.get("method"), name


@settings(max_examples=1000, deadline=None)
@given(ambiguous_bodies())
def test_the_gateway_refuses_or_sees_the_call_every_reader_sees(text: str) -> None:
    result = parse_mcp(post(text.encode()))
    if isinstance(result, Malformed):
        return
    assert isinstance(result, McpRequest)
    (call,) = result.calls
    for reader_name, reader in READERS.items():
        method, name = call_as_read(text, reader)
        assert method == call.method, f"{reader_name} reads another method in {text}"
        if call.method in NAMED_METHODS:  # the name is what the policy authorizes there
            assert name == call.name, f"{reader_name} reads another name in {text}"


def test_the_differential_can_tell_readers_apart() -> None:
    # The readers really differ on these bodies; the gateway refuses each of them.
    duplicate = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        '"params":{"name":"get_quote","name":"place_trade"}}'
    )
    folded = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        '"params":{"name":"get_quote","Name":"place_trade"}}'
    )
    assert call_as_read(duplicate, first_wins) != call_as_read(duplicate, last_wins)
    assert call_as_read(folded, last_wins) != call_as_read(folded, folded_last_wins)
    for text in (duplicate, folded):
        refused = parse_mcp(post(text.encode()))
        assert isinstance(refused, Malformed)
        assert refused.reason == "duplicate_key"
