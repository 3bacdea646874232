"""identity.credentials.extract_credential, one example per branch.

The grammars themselves (which bearer headers, API keys and query spellings are read how)
are property-tested in test_credentials_properties.py; these are the cases a reader checks
first: one credential, none, each way of sending two, and the two kinds of bad header (an
ambiguous one is a 400, an unusable one a 401, so the type matters as much as the reason).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from policy_service.edge.envoy_in import to_http_request
from policy_service.identity.credentials import (
    AmbiguousCredential,
    Credential,
    CredentialType,
    ExtractedCredential,
    UnusableCredential,
    extract_credential,
)
from policy_service.testing import mcp_request, tool_call_body
from tests.support.checks import check_request

API_KEY_HEADER = "x-api-key"  # the bundle's default
SECRET = "s3cr3t-t0ken"

TWO_TOKENS = AmbiguousCredential(
    "multiple_authorization_headers", "send exactly one Authorization header"
)
TWO_KEYS = AmbiguousCredential("multiple_api_keys", "send exactly one API key header")
TOKEN_AND_KEY = AmbiguousCredential(
    "multiple_credentials", "send either a bearer token or an API key, not both"
)
IN_THE_QUERY = AmbiguousCredential(
    "token_in_query", "credentials must be sent in a header, never in the URL"
)


def extract(
    headers: dict[str, str] | None = None,
    *,
    query: str = "",
    repeated: frozenset[str] = frozenset(),
    api_key_header: str = API_KEY_HEADER,
) -> ExtractedCredential:
    """An MCP tools/call carrying ``headers`` (lower-case names, repeated ones joined, as
    ``HttpRequest`` holds them) and ``query``."""
    request = mcp_request(tool_call_body(), headers=headers, query=query)
    return extract_credential(replace(request, repeated_headers=repeated), api_key_header)


# --- one credential, or none -----------------------------------------------------------------


def test_a_request_without_a_credential_has_none() -> None:
    assert extract(query="page=2") is None


def test_a_bearer_token_in_the_authorization_header_is_the_credential() -> None:
    assert extract({"authorization": "Bearer abc.def.ghi"}) == Credential(
        CredentialType.BEARER, "abc.def.ghi"
    )


def test_an_api_key_in_the_api_key_header_is_the_credential() -> None:
    assert extract({"x-api-key": "ci-bot-key"}) == Credential(CredentialType.API_KEY, "ci-bot-key")


def test_the_api_key_is_read_from_the_header_the_bundle_names_only() -> None:
    headers = {"x-team-key": "team-key", "x-api-key": "default-named-key"}

    assert extract(headers, api_key_header="x-team-key") == Credential(
        CredentialType.API_KEY, "team-key"
    )
    assert extract({"x-api-key": "default-named-key"}, api_key_header="x-team-key") is None


def test_a_query_that_names_no_credential_leaves_the_header_credential() -> None:
    result = extract({"authorization": "Bearer abc"}, query="page=2;token_type=x&accessible=1")

    assert result == Credential(CredentialType.BEARER, "abc")


# --- two credentials, or one in the URL ------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "repeated", "expected"),
    [
        ({"authorization": "Bearer a,Bearer b"}, {"authorization"}, TWO_TOKENS),
        ({"x-api-key": "k1,k2"}, {"x-api-key"}, TWO_KEYS),
        ({"authorization": "Bearer a", "x-api-key": "k1"}, set(), TOKEN_AND_KEY),
        # Both are refused whatever their form: no choosing the one that parses.
        ({"authorization": "Bearer a b", "x-api-key": "k1"}, set(), TOKEN_AND_KEY),
        ({"authorization": "Bearer a", "x-api-key": "k 1"}, set(), TOKEN_AND_KEY),
        # Two of one kind is said before one of each.
        ({"authorization": "Bearer a,Bearer b", "x-api-key": "k1"}, {"authorization"}, TWO_TOKENS),
        ({"authorization": "Bearer a", "x-api-key": "k1,k2"}, {"x-api-key"}, TWO_KEYS),
    ],
    ids=[
        "two-tokens",
        "two-keys",
        "token-and-key",
        "malformed-token-and-key",
        "token-and-malformed-key",
        "two-tokens-and-a-key",
        "a-token-and-two-keys",
    ],
)
def test_more_than_one_credential_is_ambiguous(
    headers: dict[str, str], repeated: set[str], expected: AmbiguousCredential
) -> None:
    assert extract(headers, repeated=frozenset(repeated)) == expected


def test_two_authorization_headers_as_envoy_sends_them_are_ambiguous() -> None:
    check = check_request(headers=[("Authorization", "Bearer a"), ("authorization", "Bearer b")])

    result = extract_credential(to_http_request(check), API_KEY_HEADER)

    assert result == TWO_TOKENS


def test_a_comma_in_one_authorization_header_reads_as_two_tokens() -> None:
    # Envoy joins repeated Authorization headers with a comma even with encode_raw_headers
    # (it is an inline header), so a joined value must be caught without repeated_headers.
    assert extract({"authorization": "Bearer a,Bearer b"}) == TWO_TOKENS


@pytest.mark.parametrize(
    ("headers", "repeated", "query"),
    [
        ({}, set(), "access_token=abc"),
        ({}, set(), "page=2;api_key=abc"),
        ({}, set(), "page=2&X-Api-Key=abc"),  # the API key header's own name
        ({"authorization": "Bearer abc"}, set(), "access_token=abc"),
        # The URL is judged first: what the headers hold, even two tokens, changes nothing.
        ({"authorization": "Bearer a,Bearer b"}, {"authorization"}, "access_token=abc"),
    ],
    ids=["token", "api-key", "api-key-header-name", "beside-a-header", "beside-two-headers"],
)
def test_a_credential_in_the_query_is_refused(
    headers: dict[str, str], repeated: set[str], query: str
) -> None:
    assert extract(headers, query=query, repeated=frozenset(repeated)) == IN_THE_QUERY


def test_the_query_is_checked_for_the_bundles_api_key_header_name() -> None:
    result = extract({}, query="x-team-key=abc", api_key_header="x-team-key")

    assert result == IN_THE_QUERY


# --- malformed headers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Token abc", "Bearer\u00a0abc"],
    ids=["basic", "other-scheme", "nbsp-after-scheme"],
)
def test_an_authorization_header_of_another_scheme_is_unusable(value: str) -> None:
    # Unusable, not ambiguous: the caller sent one credential we never accept (a 401).
    assert extract({"authorization": value}) == UnusableCredential(
        "unsupported_auth_scheme", "the Authorization header must use the Bearer scheme"
    )


@pytest.mark.parametrize(
    "value", ["Bearer", "Bearer a b", 'Bearer "abc"', "Bearer abc\u2028"], ids=repr
)
def test_a_bearer_header_that_is_not_one_b64token_is_ambiguous(value: str) -> None:
    assert extract({"authorization": value}) == AmbiguousCredential(
        "malformed_authorization_header", "the Authorization header must be 'Bearer <token>'"
    )


@pytest.mark.parametrize("value", ["", "ci bot", "ci-b\u00f6t", "k1,k2"], ids=repr)
def test_an_api_key_that_is_not_visible_ascii_is_ambiguous(value: str) -> None:
    assert extract({"x-api-key": value}) == AmbiguousCredential(
        "malformed_api_key_header", "the API key header is malformed"
    )


# --- secrets stay out of logs ----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CredentialType))
def test_a_credentials_repr_and_str_never_show_its_secret(kind: CredentialType) -> None:
    credential = Credential(kind, SECRET)

    shown = [repr(credential), str(credential), f"{credential}", repr([credential])]

    assert all(SECRET not in text for text in shown), shown
    assert repr(credential) == f"Credential(type={kind.value}, secret=<redacted>)"
    assert credential.secret == SECRET  # redacted in text only, not in the value


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"authorization": f"Basic {SECRET}"}, ""),
        ({"authorization": f"Bearer {SECRET} {SECRET}"}, ""),
        ({"authorization": f"Bearer {SECRET},Bearer {SECRET}"}, ""),
        ({"authorization": f"Bearer {SECRET}", "x-api-key": SECRET}, ""),
        ({"x-api-key": f"{SECRET} {SECRET}"}, ""),
        ({}, f"access_token={SECRET}"),
    ],
    ids=["scheme", "malformed", "joined", "token-and-key", "malformed-key", "query"],
)
def test_a_refusal_never_quotes_the_secret_it_refused(headers: dict[str, str], query: str) -> None:
    result = extract(headers, query=query)

    assert isinstance(result, AmbiguousCredential | UnusableCredential), result
    assert SECRET not in repr(result)
