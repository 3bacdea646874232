"""Claims two readers could disagree on are refused: a future ``iat``, non-UTF-8 JSON.

``iat`` beyond the issuer's leeway is ``issued_in_future``; an ``iat`` that is not a
NumericDate is ``malformed_token``. A payload must be UTF-8 JSON (RFC 7519 section 7.2)
whose strings are Unicode text: UTF-16 JSON and lone surrogates are ``malformed_token``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service.decisions.model import Deny, DenyKind
from policy_service.decisions.render import render_deny
from policy_service.identity.config import IssuerConfig
from policy_service.identity.jwt import JwtVerifier
from policy_service.identity.principal import IdentityFailure, Principal
from policy_service.pipeline import CheckPipeline
from policy_service.request.model import HttpRequest
from policy_service.state import BundleState
from policy_service.testing import FakeClock, mcp_request, tool_call_body
from tests.support.bundles import TestBundle, write_test_bundle

ISS = "https://idp.example.com"
AUD = "https://mcp.example.com/mcp"
NOW = 1_700_000_000.0
SECRET = b"a-test-hs256-secret-of-32-bytes!!"
YEAR = 365 * 24 * 3600

Verify = Callable[..., Principal | IdentityFailure]


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "sub": "user-1", "aud": AUD, "iat": NOW, "exp": NOW + 600}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_over(payload: bytes) -> str:
    """A token whose payload segment is exactly ``payload`` (no library re-encodes it)."""
    signing_input = f"{b64(json.dumps({'alg': 'HS256'}).encode())}.{b64(payload)}"
    signature = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@contextmanager
def sync_verifier(leeway: float = 30.0) -> Iterator[Callable[[str], Any]]:
    loop = asyncio.new_event_loop()
    config = IssuerConfig(
        name="main",
        issuer=ISS,
        algorithms=("HS256",),
        hs256_secret=SECRET,
        leeway_seconds=leeway,
    )
    verifier = JwtVerifier([config], clock=FakeClock(now=NOW), cache_size=0)
    try:
        yield lambda token: loop.run_until_complete(verifier.verify(token, [AUD]))
    finally:
        loop.run_until_complete(verifier.aclose())
        loop.close()


def verify_claims(payload: dict[str, Any], leeway: float = 30.0) -> Principal | IdentityFailure:
    with sync_verifier(leeway) as verify:
        result: Principal | IdentityFailure = verify(
            pyjwt.encode(payload, SECRET, algorithm="HS256")
        )
        return result


# --- iat ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leeway", "iat_offset", "reason"),
    [
        (30.0, -YEAR, None),
        (30.0, 0, None),
        (30.0, 29, None),
        (30.0, 30, None),  # at the edge of the leeway: as `nbf` is treated
        (30.0, 30.5, "issued_in_future"),
        (30.0, 31, "issued_in_future"),
        (30.0, YEAR, "issued_in_future"),  # the reported case: a year ahead
        (0.0, 0, None),
        (0.0, 1, "issued_in_future"),
        (600.0, 599, None),
        (600.0, 601, "issued_in_future"),
    ],
)
def test_iat_beyond_the_leeway_is_refused(
    leeway: float, iat_offset: float, reason: str | None
) -> None:
    # exp is always ahead of both now and iat, so only iat can be the reason for a refusal.
    iat = NOW + iat_offset
    result = verify_claims(claims(iat=iat, exp=max(iat, NOW) + 600), leeway)
    if reason is None:
        assert isinstance(result, Principal)
    else:
        assert result == IdentityFailure(
            "issued_in_future", "The token's issue time is in the future."
        )


def test_a_token_without_iat_is_still_accepted() -> None:
    # RFC 7519 makes iat optional; only a wrong one is refused.
    assert isinstance(verify_claims(claims(iat=None)), Principal)


@pytest.mark.parametrize(
    "iat",
    ["now", str(int(NOW)), True, False, [NOW], {"t": NOW}, float("inf"), 10**400],
    ids=["word", "numeric-string", "true", "false", "list", "object", "infinity", "huge"],
)
def test_an_iat_that_is_not_a_number_is_malformed(iat: Any) -> None:
    result = verify_claims(claims(iat=iat))
    assert isinstance(result, IdentityFailure)
    assert result.reason == "malformed_token"


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.floats(min_value=0, max_value=3600, allow_nan=False),
    st.one_of(
        st.integers(-(10**10), 10**10),
        st.floats(-1e10, 1e10, allow_nan=False, allow_infinity=False),
    ),
)
def test_iat_is_refused_exactly_when_it_is_past_now_plus_leeway(leeway: float, iat: float) -> None:
    result = verify_claims(claims(iat=iat, exp=max(iat, NOW) + 600), leeway)
    if NOW + leeway < iat:
        assert isinstance(result, IdentityFailure)
        assert result.reason == "issued_in_future"
    else:
        assert isinstance(result, Principal)


# --- the payload must be UTF-8 text ------------------------------------------------------


def test_a_utf16_payload_is_malformed() -> None:
    payload = json.dumps(claims()).encode("utf-16")
    with sync_verifier() as verify:
        result = verify(hs256_over(payload))
    assert isinstance(result, IdentityFailure)
    assert result.reason == "malformed_token"


@pytest.mark.parametrize(
    "raw",
    [
        b'"sub": "\\ud800"',  # a lone high surrogate, as an escape
        b'"sub": "x\\udc00y"',  # a lone low surrogate
        b'"sub": "\xed\xa0\x80"',  # a surrogate encoded as (invalid) UTF-8 bytes
        b'"sub": "user-1", "groups": ["\\ud83d"]',  # anywhere in the claims, not only sub
        b'"sub": "user-1", "\\udfff": 1',  # in a key
    ],
)
def test_a_lone_surrogate_anywhere_is_malformed(raw: bytes) -> None:
    payload = (
        b'{"iss": "' + ISS.encode() + b'", "aud": "' + AUD.encode() + b'", '
        b'"iat": 1700000000, "exp": 1700000600, ' + raw + b"}"
    )
    with sync_verifier() as verify:
        result = verify(hs256_over(payload))
    assert isinstance(result, IdentityFailure)
    assert result.reason == "malformed_token"


def test_an_escaped_surrogate_pair_is_text_and_accepted() -> None:
    # Encoders that write ASCII only (json.dumps by default) escape emoji as a pair.
    payload = json.dumps(claims(sub="alice\U0001f600")).encode()
    assert b"\\ud83d\\ude00" in payload
    with sync_verifier() as verify:
        result = verify(hs256_over(payload))
    assert isinstance(result, Principal)
    assert result.subject == "alice\U0001f600"


# --- through the gateway: a future iat is a 401 with its reason --------------------------


@pytest.fixture
def test_bundle(tmp_path: Path) -> TestBundle:
    return write_test_bundle(tmp_path)


@pytest.fixture
async def gateway(test_bundle: TestBundle) -> CheckPipeline:
    state = BundleState.from_bundle(test_bundle.bundle)
    await state.jwt.start()
    return CheckPipeline(state)


def tool_call(token: str) -> HttpRequest:
    return mcp_request(tool_call_body("get_quote"), token=token)


async def test_a_token_issued_a_year_ahead_gets_401_issued_in_future(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    # The gateway runs on the real clock here, as test_bundle.token mints on it.
    ahead = int(time.time()) + YEAR
    token = test_bundle.token("fininfo:read", iat=ahead, exp=ahead + 3600)
    decision = await gateway.check(tool_call(token))
    assert isinstance(decision, Deny)
    assert decision.kind is DenyKind.INVALID_CREDENTIAL
    assert decision.reason == "issued_in_future"
    answer = render_deny(decision)
    assert answer.status == 401
    challenge = dict(answer.headers)["www-authenticate"]
    assert challenge.startswith(
        'Bearer error="invalid_token", error_description="issued_in_future"'
    )
    assert token not in answer.body.decode()


async def test_a_scope_claim_split_by_a_tab_gets_401_not_the_second_scope(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    # place_trade needs fininfo:trade; a TAB-separated claim must not grant it.
    token = test_bundle.token("fininfo:read\tfininfo:trade")
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "place_trade", "arguments": {}},
    }
    request = tool_call(token)
    request = HttpRequest(
        method=request.method,
        path=request.path,
        headers=request.headers,
        body=json.dumps(body).encode(),
    )
    decision = await gateway.check(request)
    assert isinstance(decision, Deny)
    assert (decision.kind, decision.reason) == (DenyKind.INVALID_CREDENTIAL, "malformed_token")
