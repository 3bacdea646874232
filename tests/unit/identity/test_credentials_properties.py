"""extract_credential reads headers and the query exactly by their grammars.

- Authorization: ``[OWS] "Bearer" 1*SP b64token [OWS]`` (RFC 6750 section 2.1), with OWS
  being SP and HTAB only (RFC 9110): no NBSP, no Unicode space is trimmed or split on.
- An API key: ``[OWS] 1*( %x21-2B / %x2D-7E ) [OWS]``: visible ASCII without a comma.
- The query: fields split on "&" and ";", names compared percent-decoded, case-folded and
  without punctuation, so no spelling of access_token or api_key slips through.

The properties compare extract_credential with an oracle written straight from those
grammars, and with Python's own query parser.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service.identity.credentials import (
    AmbiguousCredential,
    Credential,
    CredentialType,
    ExtractedCredential,
    UnusableCredential,
    extract_credential,
)
from policy_service.request.model import HttpRequest

API_KEY_HEADER = "x-api-key"
B64TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
# The oracles: the RFC grammars, written here rather than imported.
RFC6750_CREDENTIALS = re.compile(r"[ \t]*[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)[ \t]*")
VISIBLE_ASCII_NO_COMMA = re.compile(r"[ \t]*([\x21-\x2b\x2d-\x7e]+)[ \t]*")
WHITESPACE_NOT_OWS = ["\xa0", "\u2000", "\u2028", "\u3000", "\x85", "\x0b", "\x0c", "\r", "\n"]

b64tokens = st.builds(
    lambda body, pad: body + "=" * pad,
    st.text(B64TOKEN_CHARS, min_size=1, max_size=40),
    st.integers(0, 2),
)
ows = st.text(" \t", max_size=3)


def extract(headers: dict[str, str] | None = None, query: str = "") -> ExtractedCredential:
    return extract_credential(
        HttpRequest(method="GET", path="/fininfo/mcp", query=query, headers=headers or {}),
        API_KEY_HEADER,
    )


def reason(result: ExtractedCredential) -> str:
    assert isinstance(result, AmbiguousCredential | UnusableCredential), result
    return result.reason


# --- Authorization: Bearer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer  abc", "abc"),  # 1*SP
        ("\tBearer abc \t", "abc"),  # OWS is SP and HTAB
        ("Bearer a.b.c", "a.b.c"),
        ("Bearer abc+/~==", "abc+/~=="),
    ],
)
def test_well_formed_bearer_headers(value: str, token: str) -> None:
    assert extract({"authorization": value}) == Credential(CredentialType.BEARER, token)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc\xa0", "malformed_authorization_header"),  # str.strip() would drop NBSP
        ("\xa0Bearer abc", "unsupported_auth_scheme"),
        ("Bearer\xa0abc", "unsupported_auth_scheme"),  # only SP separates scheme and token
        ("Bearer\tabc", "unsupported_auth_scheme"),
        ("Bearer abc\u2028", "malformed_authorization_header"),
        ("Bearer \u3000abc", "malformed_authorization_header"),
        ("Bearer ab c", "malformed_authorization_header"),
        ("Bearer abc=d", "malformed_authorization_header"),  # "=" only at the end
        ('Bearer ab"c', "malformed_authorization_header"),
        ("Bearer", "malformed_authorization_header"),
        ("Bearer ", "malformed_authorization_header"),
        ("Bearer abc,Bearer def", "multiple_authorization_headers"),  # Envoy's join
        ("B\u0435arer abc", "unsupported_auth_scheme"),  # a Cyrillic small ie for the e
        ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", "unsupported_auth_scheme"),
    ],
)
def test_malformed_bearer_headers_are_refused(value: str, expected: str) -> None:
    assert reason(extract({"authorization": value})) == expected


@settings(max_examples=300, deadline=None, database=None)
@given(
    ows,
    st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
    st.integers(1, 3),
    b64tokens,
    ows,
)
def test_any_rfc6750_credentials_give_their_token(
    lead: str, scheme: str, spaces: int, token: str, trail: str
) -> None:
    value = f"{lead}{scheme}{' ' * spaces}{token}{trail}"
    assert extract({"authorization": value}) == Credential(CredentialType.BEARER, token)


authorization_values = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda lead, token, noise, trail: f"{lead}Bearer {token}{noise}{trail}",
        ows,
        b64tokens,
        st.text(st.sampled_from([*WHITESPACE_NOT_OWS, " ", "\t", ",", '"', "=", "a"]), max_size=3),
        st.one_of(ows, st.sampled_from(WHITESPACE_NOT_OWS)),
    ),
)


@settings(max_examples=300, deadline=None, database=None)
@given(authorization_values)
def test_a_bearer_token_is_taken_exactly_when_rfc6750_reads_one(value: str) -> None:
    result = extract({"authorization": value})
    match = RFC6750_CREDENTIALS.fullmatch(value)
    if match is None:
        assert not isinstance(result, Credential)
    else:
        assert result == Credential(CredentialType.BEARER, match.group(1))


# --- API keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "key"),
    [("sk-live-123", "sk-live-123"), ("  sk-live-123\t", "sk-live-123"), ("a=b!~", "a=b!~")],
)
def test_well_formed_api_keys(value: str, key: str) -> None:
    assert extract({API_KEY_HEADER: value}) == Credential(CredentialType.API_KEY, key)


@pytest.mark.parametrize(
    "value",
    ["", " ", "sk-live-123\xa0", "\xa0sk-live-123", "sk live", "sk-\u2028live", "k\u20acy", "a,b"],
)
def test_malformed_api_keys_are_refused(value: str) -> None:
    assert reason(extract({API_KEY_HEADER: value})) == "malformed_api_key_header"


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.one_of(
        st.text(max_size=20),
        st.builds(
            lambda lead, key, trail: lead + key + trail,
            st.one_of(ows, st.sampled_from(WHITESPACE_NOT_OWS)),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1),
            st.one_of(ows, st.sampled_from(WHITESPACE_NOT_OWS)),
        ),
    )
)
def test_an_api_key_is_taken_exactly_when_it_is_visible_ascii(value: str) -> None:
    result = extract({API_KEY_HEADER: value})
    match = VISIBLE_ASCII_NO_COMMA.fullmatch(value)
    if match is None:
        assert reason(result) == "malformed_api_key_header"
    else:
        assert result == Credential(CredentialType.API_KEY, match.group(1))


# --- credentials in the query ------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "access_token=abc",
        "x=1;access_token=abc",  # the reported case: ";" is a separator upstream
        "x=1&y=2;api_key=abc",
        "access%5Ftoken=abc",  # percent-encoded name
        "%61ccess_token=abc",
        "access%255Ftoken=abc",  # encoded twice
        "ACCESS_TOKEN=abc",
        "Access-Token=abc",
        "access.token=abc",  # PHP reads "." as "_"
        "access+token=abc",  # and a form-decoded "+" is a space
        "access_token[]=abc",
        "\uff41ccess_token=abc",  # a fullwidth "a": NFKC folds it
        "apikey=abc",
        "API-Key=abc",
        "x-api-key=abc",  # the API key header's own name
        "access_token",  # no value is still a credential's name
        "access_token=",
    ],
)
def test_credentials_in_the_query_are_refused(query: str, bearer: bool) -> None:
    headers = {"authorization": "Bearer abc"} if bearer else {}
    result = extract(headers, query=query)
    assert isinstance(result, AmbiguousCredential)
    assert result.reason == "token_in_query"
    assert "abc" not in result.message


@pytest.fixture(params=[True, False], ids=["with-bearer", "alone"])
def bearer(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.mark.parametrize(
    "query",
    [
        "x=access_token",  # a value, not a name
        "page_token=abc",
        "access_tokens=1",
        "token=abc",
        "tokenaccess=1",
        "x=1;y=2",
        "%",
        "=;&",
    ],
)
def test_other_query_fields_pass(query: str) -> None:
    assert extract({"authorization": "Bearer abc"}, query=query) == Credential(
        CredentialType.BEARER, "abc"
    )


NAMES = ["access_token", "api_key", "apikey", API_KEY_HEADER]
field_text = st.text(st.characters(exclude_characters="&;#"), max_size=10)


@st.composite
def disguised_names(draw: Any) -> str:
    """A credential name as an attacker might spell it: any case, any of its characters
    percent-encoded (once or twice, either hex case), "-" or "." for "_"."""
    name = draw(st.sampled_from(NAMES))
    out = []
    for char in name:
        if char == "_":
            char = draw(st.sampled_from(["_", "-", ".", "", "+"]))
        if char.isalpha() and draw(st.booleans()):
            char = char.upper()
        how = draw(st.sampled_from(["plain", "plain", "once", "twice", "lower"]))
        if how == "once":
            char = quote(char, safe="") if not char.isalnum() else f"%{ord(char):02X}"
        elif how == "twice":
            char = f"%25{ord(char):02X}" if char else char
        elif how == "lower" and char:
            char = f"%{ord(char):02x}"
        out.append(char)
    return "".join(out)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(st.tuples(field_text, field_text), max_size=4),
    disguised_names(),
    field_text,
    st.lists(st.tuples(field_text, field_text), max_size=4),
    st.lists(st.sampled_from("&;"), min_size=10, max_size=10),
)
def test_a_credential_name_anywhere_in_the_query_is_found(
    before: list[tuple[str, str]],
    name: str,
    value: str,
    after: list[tuple[str, str]],
    separators: list[str],
) -> None:
    fields = [f"{k}={v}" for k, v in before] + [f"{name}={value}"] + [f"{k}={v}" for k, v in after]
    query = fields[0]
    for position, field in enumerate(fields[1:]):
        query += separators[position] + field
    assert reason(extract({}, query=query)) == "token_in_query"


query_pieces = st.sampled_from(
    [
        *("access_token", "Access_Token", "api_key", "apikey", "X-API-KEY", "access", "token"),
        *("_", "%5F", "%5f", "%", "=", "&", ";", "+", " ", "a", "%3B", "%26", "\xa0"),
    ]
)
queries = st.one_of(st.text(max_size=40), st.lists(query_pieces, max_size=8).map("".join))


@settings(max_examples=300, deadline=None, database=None)
@given(queries)
def test_whatever_pythons_parser_calls_a_credential_is_refused(query: str) -> None:
    # parse_qsl with either separator is one reading an upstream may have: every name it
    # finds that is a credential's must be refused here too.
    names = {
        name.lower()
        for separator in ("&", ";")
        for name, _ in parse_qsl(query, keep_blank_values=True, separator=separator)
    }
    if names & {"access_token", "api_key", "apikey", API_KEY_HEADER}:
        assert reason(extract({}, query=query)) == "token_in_query"
