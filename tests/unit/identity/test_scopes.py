"""Scopes are read by RFC 6749 section 3.3, in tokens and in bundles alike.

A ``scope`` claim is scope-tokens (%x21 / %x23-5B / %x5D-7E) separated by exactly one SP.
Anything else (a TAB or NBSP as the separator, doubled or outer spaces, a list element
holding a space) is read differently by different parsers, so the token is refused as
``malformed_token`` rather than granted whatever one reading of it says.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jwt as pyjwt
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service.bundles.files import BundleFiles
from policy_service.bundles.loader import load_bundle_files
from policy_service.errors import BundleError
from policy_service.identity.config import IssuerConfig
from policy_service.identity.jwt import JwtVerifier
from policy_service.identity.principal import IdentityFailure, Principal
from policy_service.identity.scopes import is_scope_token, parse_scopes
from policy_service.testing import FakeClock

ISS = "https://idp.example.com"
AUD = "https://mcp.example.com/mcp"
NOW = 1_700_000_000.0
SECRET = b"a-test-hs256-secret-of-32-bytes!!"

# The RFC's alphabet, written out independently of the implementation's regex.
SCOPE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\')
# Separators a str.split() would honour and RFC 6749 does not.
NOT_SP = ["\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2000", "\u2028", "\u3000"]

scope_tokens = st.text(SCOPE_CHARS, min_size=1, max_size=12)
scope_lists = st.lists(scope_tokens, min_size=1, max_size=6)


def rfc_scope_token(value: str) -> bool:
    return bool(value) and all(char in SCOPE_CHARS for char in value)


# --- the parser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claim",
    [
        "fininfo:read\tfininfo:trade",  # the reported case: TAB as the separator
        "fininfo:read\xa0fininfo:trade",  # and NBSP
        "fininfo:read\u2028fininfo:trade",
        "fininfo:read\nfininfo:trade",
        "fininfo:read\n",
        "fininfo:read  fininfo:trade",  # an empty element between two SPs
        " fininfo:read",
        "fininfo:read ",
        " ",
        'fininfo:"read"',
        "fininfo\\read",
        "fininfo:réad",
        "fininfo:read\x00",
        "fininfo:read\x7f",
    ],
)
def test_malformed_scope_strings_are_refused(claim: str) -> None:
    assert parse_scopes(claim) is None


@pytest.mark.parametrize(
    ("claim", "scopes"),
    [
        ("fininfo:read fininfo:trade", {"fininfo:read", "fininfo:trade"}),
        ("a", {"a"}),
        ("a a", {"a"}),
        ("", set()),  # issuers write "" for a token without scopes
        ("!#$%&'()*+,-./0123456789:;<=>?@[]^_`{|}~", {"!#$%&'()*+,-./0123456789:;<=>?@[]^_`{|}~"}),
    ],
)
def test_well_formed_scope_strings(claim: str, scopes: set[str]) -> None:
    assert parse_scopes(claim) == frozenset(scopes)


@settings(max_examples=300, deadline=None, database=None)
@given(scope_lists)
def test_any_sp_joined_list_of_scope_tokens_parses_to_itself(tokens: list[str]) -> None:
    assert parse_scopes(" ".join(tokens)) == frozenset(tokens)


@settings(max_examples=300, deadline=None, database=None)
@given(scope_lists, st.data())
def test_any_separator_but_one_sp_refuses_the_claim(tokens: list[str], data: Any) -> None:
    separator = data.draw(
        st.one_of(st.sampled_from(NOT_SP), st.sampled_from(["  ", " \t", "\t "])), "separator"
    )
    where = data.draw(st.integers(0, len(tokens)), "where")
    # The odd separator goes between two tokens, or before the first, or after the last.
    claim = " ".join(tokens[:where]) + separator + " ".join(tokens[where:])
    assert parse_scopes(claim) is None


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.text(), st.text(SCOPE_CHARS + " \t\xa0\n"), st.text(SCOPE_CHARS + " ")))
def test_whatever_is_accepted_every_reader_reads_alike(claim: str) -> None:
    scopes = parse_scopes(claim)
    if scopes is None:
        return
    # Splitting on SP, on any whitespace, or on runs of it: one answer, the one we gave.
    assert scopes == frozenset(claim.split()) == frozenset(re.split(r"\s+", claim)) - {""}
    assert scopes == (frozenset(claim.split(" ")) if claim else frozenset())
    assert all(rfc_scope_token(scope) for scope in scopes)


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.text(), st.text(SCOPE_CHARS + '\x7f "\\\t\n\xa0')))
def test_is_scope_token_is_the_rfc_grammar(value: str) -> None:
    assert is_scope_token(value) is rfc_scope_token(value)


# --- through the verifier: a malformed claim refuses the whole token -------------------


Verify = Callable[..., Principal | IdentityFailure]


@contextmanager
def sync_verifier() -> Iterator[Verify]:
    """Verify HS256 tokens with the given claims, synchronously, on a loop of its own (so
    that Hypothesis examples, which run synchronously, can use it too)."""
    loop = asyncio.new_event_loop()
    config = IssuerConfig(name="main", issuer=ISS, algorithms=("HS256",), hs256_secret=SECRET)
    verifier = JwtVerifier([config], clock=FakeClock(now=NOW), cache_size=0)

    def verify(**claims: Any) -> Principal | IdentityFailure:
        payload = {"iss": ISS, "sub": "user-1", "aud": AUD, "iat": NOW, "exp": NOW + 600}
        payload.update(claims)
        token = pyjwt.encode(payload, SECRET, algorithm="HS256")
        return loop.run_until_complete(verifier.verify(token, [AUD]))

    try:
        yield verify
    finally:
        loop.run_until_complete(verifier.aclose())
        loop.close()


@pytest.fixture
def verify() -> Iterator[Verify]:
    with sync_verifier() as verify:
        yield verify


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": "fininfo:read\tfininfo:trade"},
        {"scope": "fininfo:read\xa0fininfo:trade"},
        {"scope": "fininfo:read  fininfo:trade"},
        {"scope": " fininfo:read"},
        {"scp": "fininfo:read\tfininfo:trade"},
        {"scp": ["fininfo:read fininfo:trade"]},  # one element, or two?
        {"scp": ["fininfo:read\tfininfo:trade"]},
        {"scp": ["fininfo:read", ""]},
        {"scp": ["fininfo:read", 7]},
        {"scp": ["fininfo:read", None]},
        {"scp": ["fininfo:réad"]},
        {"scp": {"fininfo:read": True}},
        {"scope": "fininfo:trade\u2028", "scp": ["fininfo:read"]},  # scope wins, and is bad
    ],
)
def test_a_malformed_scope_claim_refuses_the_token(verify: Verify, claims: dict[str, Any]) -> None:
    result = verify(**claims)
    assert isinstance(result, IdentityFailure)
    assert result.reason == "malformed_token"
    # The description is fixed text: no claim value ever reaches it.
    assert "fininfo" not in result.description


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        ({"scope": "fininfo:read fininfo:trade"}, {"fininfo:read", "fininfo:trade"}),
        ({"scp": ["fininfo:read", "fininfo:trade"]}, {"fininfo:read", "fininfo:trade"}),
        ({"scp": "fininfo:read fininfo:trade"}, {"fininfo:read", "fininfo:trade"}),
        ({"scp": []}, set()),
        ({"scope": ""}, set()),
        ({}, set()),
    ],
)
def test_well_formed_scope_claims_grant_their_scopes(
    verify: Verify, claims: dict[str, Any], scopes: set[str]
) -> None:
    result = verify(**claims)
    assert isinstance(result, Principal)
    assert result.scopes == frozenset(scopes)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.one_of(
        st.text(SCOPE_CHARS + " \t\xa0", max_size=30),
        st.lists(st.one_of(st.text(SCOPE_CHARS + " \t", max_size=8), st.integers()), max_size=4),
    )
)
def test_the_token_grants_exactly_what_the_rfc_reading_says(claim: Any) -> None:
    key = "scope" if isinstance(claim, str) else "scp"
    with sync_verifier() as verify:
        result = verify(**{key: claim})
    if isinstance(claim, str):
        expected = parse_scopes(claim)
    elif all(isinstance(item, str) and rfc_scope_token(item) for item in claim):
        expected = frozenset(claim)
    else:
        expected = None
    if expected is None:
        assert isinstance(result, IdentityFailure)
        assert result.reason == "malformed_token"
    else:
        assert isinstance(result, Principal)
        assert result.scopes == expected


# --- bundles: the same grammar for scopes a bundle grants and requires -----------------


def compile_with_scope(scope: str) -> list[str]:
    """Lint problems for a bundle whose API key and rule use ``scope``."""
    document = {
        "version": "v1",
        "api_keys": [{"id": "ci-bot", "sha256": "0" * 64, "subject": "ci-bot", "scopes": [scope]}],
        "upstreams": [
            {
                "name": "fininfo",
                "path_prefix": "/fininfo/",
                "protocol": "mcp",
                "resource": "https://gw.example.com/fininfo/mcp",
                "rules": [{"tools": ["get_quote"], "scopes": [scope]}],
            }
        ],
    }
    text = yaml.safe_dump(document, allow_unicode=False, width=1 << 20)
    files = BundleFiles(
        entry="bundle.yaml", origin="bundle.yaml", files={"bundle.yaml": text.encode()}
    )
    try:
        load_bundle_files(files, environ={})
    except BundleError as error:
        return [f"{problem.path}: {problem.message}" for problem in error.problems]
    return []


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.one_of(
        scope_tokens,
        st.text(min_size=1, max_size=12),
        st.text(SCOPE_CHARS + ' "\\\t\n\xa0', min_size=1),
    )
)
def test_lint_accepts_a_scope_exactly_when_a_token_could_carry_it(scope: str) -> None:
    problems = compile_with_scope(scope)
    if rfc_scope_token(scope):
        assert problems == []
    else:
        assert len(problems) == 2
        assert problems[0].startswith("api_keys[0].scopes[0]: ")
        assert problems[1].startswith("upstreams[0].rules[0].scopes[0]: ")
        assert all("is not a valid scope" in problem for problem in problems)
        # One line, whatever the scope holds: repr() escapes line breaks and the like.
        assert all(problem.isprintable() for problem in problems)


def test_a_bundle_scope_with_a_trailing_line_break_is_refused() -> None:
    # `^...$` once matched "fininfo:read\n": `$` also matches before a final newline.
    assert compile_with_scope("fininfo:read\n") == [
        "api_keys[0].scopes[0]: 'fininfo:read\\n' is not a valid scope "
        "(visible ASCII only: no tabs, line breaks or non-ASCII characters)",
        "upstreams[0].rules[0].scopes[0]: 'fininfo:read\\n' is not a valid scope "
        "(visible ASCII only: no tabs, line breaks or non-ASCII characters)",
    ]


def test_the_scope_alphabet_is_what_the_rfc_says() -> None:
    # A guard on the test's own oracle: %x21 / %x23-5B / %x5D-7E is 92 characters.
    assert len(SCOPE_CHARS) == 92
    assert set(SCOPE_CHARS) == set(string.printable[:94]) - {'"', "\\"}
