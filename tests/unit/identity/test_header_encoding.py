"""Identity header values: injective, visible ASCII, and unchanged by HTTP.

``encode_header_value`` percent-encodes (UTF-8) "%", SP and everything outside %x21-7E, so
distinct values never arrive upstream as one header value, and nothing HTTP trims or
refuses is ever sent. A list (the scopes) is each element encoded, sorted, joined by SP.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service.identity.header_encoding import (
    decode_header_list,
    decode_header_value,
    encode_header_list,
    encode_header_value,
)

VISIBLE_ASCII = frozenset(chr(code) for code in range(0x21, 0x7F))
SCOPE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\')

# Every str, lone surrogates included (Hypothesis leaves them out of text() by default).
any_text = st.one_of(
    st.text(),
    st.text(st.characters(exclude_categories=())),
    st.text(st.one_of(st.characters(), st.characters(categories=["Cs"]))),
    st.text(" %+\t\r\n\x00\x7f\xa0\xf1abc", max_size=12),
)
# Unicode text proper: what a token can carry once jwt.py has refused lone surrogates.
unicode_text = st.text()


@st.composite
def look_alike_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """A value and a second one that spells some of its characters as their own escapes,
    or pads it with spaces: the pairs an attacker would try to make collide."""
    value = draw(st.text(" %abcñ\u00e9\U0001f600", min_size=1, max_size=10))
    out = []
    for char in value:
        how = draw(st.sampled_from(["same", "escaped", "lower-escaped"]))
        if how == "escaped":
            out.append(quote(char, safe=""))
        elif how == "lower-escaped":
            out.append(quote(char, safe="").lower())
        else:
            out.append(char)
    padding = draw(st.sampled_from(["", " ", "  ", "\t"]))
    return value, padding + "".join(out) + padding


# --- the reported cases, pinned ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("alice", "alice"),  # the usual value passes untouched
        ("  alice  ", "%20%20alice%20%20"),  # HTTP would have dropped these spaces
        ("bob\u00f1", "bob%C3%B1"),
        ("bob%C3%B1", "bob%25C3%25B1"),  # a literal "%" is escaped, so the two stay apart
        ("alice smith", "alice%20smith"),
        ("a+b", "a+b"),  # "+" stays literal: decode with a URI decoder, not a form decoder
        ("line\r\nx-injected: 1", "line%0D%0Ax-injected:%201"),
        ("\x00\x7f", "%00%7F"),
        ("\U0001f600", "%F0%9F%98%80"),
        ("spiffe://corp/ns/a?b=c#d", "spiffe://corp/ns/a?b=c#d"),
        ("", ""),
    ],
)
def test_encodings(value: str, encoded: str) -> None:
    assert encode_header_value(value) == encoded
    assert decode_header_value(encoded) == value


@pytest.mark.parametrize(
    ("one", "other"),
    [("  alice  ", "alice"), ("bob\u00f1", "bob%C3%B1"), ("a b", "a%20b"), ("\t", "%09")],
)
def test_the_reported_pairs_stay_distinct(one: str, other: str) -> None:
    assert encode_header_value(one) != encode_header_value(other)


def test_scope_lists_are_encoded_per_element_and_joined_by_sp() -> None:
    # Scope-tokens are visible ASCII, so only a "%" in one changes: upstreams that split
    # the header on SP read exactly the scopes they read before.
    assert encode_header_list({"fininfo:trade", "fininfo:read"}) == "fininfo:read fininfo:trade"
    assert encode_header_list({"a%20b"}) == "a%2520b"
    assert encode_header_list({"a", "b"}) != encode_header_list({"a b"})
    assert encode_header_list({"a b"}) == "a%20b"
    assert encode_header_list(set()) == ""
    assert encode_header_list({"", "a"}) == "a"  # "" is never a scope and has no form here
    assert decode_header_list("fininfo:read fininfo:trade") == {"fininfo:read", "fininfo:trade"}
    assert decode_header_list("") == frozenset()


@pytest.mark.parametrize(
    "value",
    [
        "%41",  # "A" is written literally: one value, one encoding
        "%c3%b1",  # escapes are upper-case
        "%",
        "%4",
        "%GG",
        "a b",  # SP is always escaped
        " a",
        "\xf1",  # non-ASCII is always escaped
        "\t",
        "%FF",  # not UTF-8
        "%C3",  # a cut-off UTF-8 sequence
    ],
)
def test_decoding_refuses_what_the_gateway_never_sends(value: str) -> None:
    with pytest.raises(ValueError, match="not a gateway-encoded header value"):
        decode_header_value(value)


@pytest.mark.parametrize("value", [" a", "a ", "a  b", "b a", "a a", "a %41"])
def test_list_decoding_refuses_what_the_gateway_never_sends(value: str) -> None:
    with pytest.raises(ValueError, match="not a gateway-encoded header"):
        decode_header_list(value)


# --- properties --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(any_text)
def test_decoding_gives_the_value_back(value: str) -> None:
    assert decode_header_value(encode_header_value(value)) == value


@settings(max_examples=300, deadline=None, database=None)
@given(any_text)
def test_output_is_visible_ascii_only(value: str) -> None:
    encoded = encode_header_value(value)
    assert set(encoded) <= VISIBLE_ASCII
    # So nothing for HTTP to trim: no SP or HTAB at either end, or anywhere.
    assert encoded == encoded.strip(" \t")
    assert " " not in encoded


@settings(max_examples=300, deadline=None, database=None)
@given(any_text)
def test_values_that_need_nothing_are_left_alone(value: str) -> None:
    untouched = set(value) <= VISIBLE_ASCII - {"%"}
    assert (encode_header_value(value) == value) is untouched


@settings(max_examples=300, deadline=None, database=None)
@given(any_text, any_text)
def test_distinct_values_give_distinct_headers(one: str, other: str) -> None:
    assert (encode_header_value(one) == encode_header_value(other)) is (one == other)


@settings(max_examples=300, deadline=None, database=None)
@given(look_alike_pairs())
def test_look_alikes_never_collide(pair: tuple[str, str]) -> None:
    one, other = pair
    assert (encode_header_value(one) == encode_header_value(other)) is (one == other)


@settings(max_examples=300, deadline=None, database=None)
@given(unicode_text)
def test_a_standard_uri_decoder_reads_it_too(value: str) -> None:
    # What an upstream author in another language uses: decodeURIComponent, PathUnescape.
    assert unquote(encode_header_value(value), errors="strict") == value


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=12))
def test_decoding_is_the_exact_inverse(header: str) -> None:
    # decode is defined exactly on encode's outputs: no second spelling of any value.
    try:
        value = decode_header_value(header)
    except ValueError:
        return
    assert encode_header_value(value) == header


@settings(max_examples=300, deadline=None, database=None)
@given(any_text)
def test_http_carries_it_unchanged(value: str) -> None:
    """Send the encoded value through a real HTTP/1.1 writer and parser (h11)."""
    encoded = encode_header_value(value)
    client = h11.Connection(h11.CLIENT)
    server = h11.Connection(h11.SERVER)
    request = h11.Request(
        method="GET",
        target="/",
        headers=[("Host", "upstream"), ("X-Gateway-Subject", encoded)],
    )
    server.receive_data(client.send(request) or b"")
    received = server.next_event()
    assert isinstance(received, h11.Request)
    headers = dict(received.headers)
    assert headers[b"x-gateway-subject"].decode("ascii") == encoded
    assert decode_header_value(headers[b"x-gateway-subject"].decode("ascii")) == value


@settings(max_examples=300, deadline=None, database=None)
@given(st.frozensets(any_text.filter(bool), max_size=6))
def test_lists_round_trip_and_split_on_sp(values: frozenset[str]) -> None:
    header = encode_header_list(values)
    assert decode_header_list(header) == values
    assert set(header) <= VISIBLE_ASCII | {" "}
    assert header == header.strip(" ")
    assert len(header.split(" ")) == len(values) or not values


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.frozensets(st.text(SCOPE_CHARS, min_size=1, max_size=8), max_size=6),
    st.frozensets(st.text(SCOPE_CHARS, min_size=1, max_size=8), max_size=6),
)
def test_distinct_scope_sets_give_distinct_headers(
    one: frozenset[str], other: frozenset[str]
) -> None:
    assert (encode_header_list(one) == encode_header_list(other)) is (one == other)
    if not any("%" in scope for scope in one):
        # Unchanged from before the encoding for every scope without a "%".
        assert encode_header_list(one) == " ".join(sorted(one))
