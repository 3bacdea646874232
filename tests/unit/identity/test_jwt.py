"""JwtVerifier: every failure reason, each algorithm, algorithm confusion, the cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization

from policy_service.errors import KeySourceError
from policy_service.identity.config import IssuerConfig
from policy_service.identity.jwks import VerificationKey
from policy_service.identity.jwt import JwtVerifier, canonical_audience
from policy_service.identity.principal import CredentialKind, IdentityFailure, Principal
from policy_service.identity.signing import SigningKey
from policy_service.testing import FakeClock, FakeJwksFetcher

ISS = "https://idp.example.com"
JWKS_URL = "https://idp.example.com/jwks"
AUD = "https://mcp.example.com/mcp"
NOW = 1_700_000_000.0
ASYMMETRIC = ("ES256", "RS256", "PS256", "EdDSA")
HS_SECRET = b"an-hs256-shared-secret-of-32-bytes!"

Build = Callable[..., Awaitable[JwtVerifier]]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(obj: Any) -> str:
    return b64(json.dumps(obj).encode())


def craft(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token built by hand, for headers and signatures no library would produce."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims; an override of None removes the claim."""
    base: dict[str, Any] = {"iss": ISS, "sub": "user-1", "aud": AUD, "iat": NOW, "exp": NOW + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def issuer(**overrides: Any) -> IssuerConfig:
    values: dict[str, Any] = {
        "name": "main",
        "issuer": ISS,
        "algorithms": ASYMMETRIC,
        "jwks_url": JWKS_URL,
    }
    values.update(overrides)
    return IssuerConfig(**values)


def failure(result: Principal | IdentityFailure) -> str:
    assert isinstance(result, IdentityFailure), f"expected a failure, got {result!r}"
    return result.reason


def principal(result: Principal | IdentityFailure) -> Principal:
    assert isinstance(result, Principal), f"expected a principal, got {result!r}"
    return result


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {alg: SigningKey.generate(alg, kid=f"{alg.lower()}-1") for alg in ASYMMETRIC}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=NOW)


@pytest.fixture
def fetcher(keys: dict[str, SigningKey]) -> FakeJwksFetcher:
    return FakeJwksFetcher({JWKS_URL: {"keys": [k.public_jwk() for k in keys.values()]}})


@pytest.fixture
async def build(clock: FakeClock, fetcher: FakeJwksFetcher) -> AsyncIterator[Build]:
    made: list[JwtVerifier] = []

    async def _build(*issuers: IssuerConfig, start: bool = True, **kwargs: Any) -> JwtVerifier:
        verifier = JwtVerifier(issuers or (issuer(),), clock=clock, fetcher=fetcher, **kwargs)
        if start:
            await verifier.start()
        made.append(verifier)
        return verifier

    yield _build
    for verifier in made:
        await verifier.aclose()


@pytest.fixture
def count_verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every asymmetric signature check (by alg)."""
    calls: list[str] = []
    original = VerificationKey.verify

    def counting(self: VerificationKey, alg: str, signing_input: bytes, sig: bytes) -> bool:
        calls.append(alg)
        return original(self, alg, signing_input, sig)

    monkeypatch.setattr(VerificationKey, "verify", counting)
    return calls


# --- accepted tokens -------------------------------------------------------------------


@pytest.mark.parametrize("alg", ASYMMETRIC)
async def test_each_asymmetric_alg_verifies(
    build: Build, keys: dict[str, SigningKey], alg: str
) -> None:
    verifier = await build()
    token = keys[alg].mint(claims(scope="tools:read tools:call", client_id="agent-7"))
    result = principal(await verifier.verify(token, [AUD]))
    assert result.subject == "user-1"
    assert result.issuer == "main"
    assert result.client_id == "agent-7"
    assert result.scopes == frozenset({"tools:read", "tools:call"})
    assert result.credential is CredentialKind.JWT
    assert result.expires_at == NOW + 600
    assert result.claims["sub"] == "user-1"
    assert dict(result.claims) == claims(scope="tools:read tools:call", client_id="agent-7")


async def test_hs256_verifies_with_the_issuers_secret(build: Build) -> None:
    verifier = await build(issuer(algorithms=("HS256",), jwks_url=None, hs256_secret=HS_SECRET))
    token = pyjwt.encode(claims(), HS_SECRET, algorithm="HS256")
    assert principal(await verifier.verify(token, [AUD])).subject == "user-1"


async def test_hs256_with_another_secret_is_a_bad_signature(build: Build) -> None:
    verifier = await build(issuer(algorithms=("HS256",), jwks_url=None, hs256_secret=HS_SECRET))
    token = pyjwt.encode(claims(), b"another-secret-of-at-least-32-bytes", algorithm="HS256")
    assert failure(await verifier.verify(token, [AUD])) == "bad_signature"


@pytest.mark.parametrize(
    ("extra", "scopes"),
    [
        ({"scope": "a b c"}, {"a", "b", "c"}),
        ({"scope": ""}, set()),
        ({"scp": []}, set()),
        ({"scp": ["a", "b"]}, {"a", "b"}),
        ({"scp": "a b"}, {"a", "b"}),
        ({"scope": "a", "scp": ["b"]}, {"a"}),  # `scope` wins when both are present
        ({}, set()),
    ],
)
async def test_scopes(
    build: Build, keys: dict[str, SigningKey], extra: dict[str, Any], scopes: set[str]
) -> None:
    verifier = await build()
    token = keys["ES256"].mint(claims(**extra))
    assert principal(await verifier.verify(token, [AUD])).scopes == frozenset(scopes)


@pytest.mark.parametrize(
    ("extra", "client_id"),
    [
        ({"client_id": "cid", "azp": "azp"}, "cid"),
        ({"azp": "azp"}, "azp"),
        ({}, None),
    ],
)
async def test_client_id_from_client_id_then_azp(
    build: Build, keys: dict[str, SigningKey], extra: dict[str, Any], client_id: str | None
) -> None:
    verifier = await build()
    token = keys["ES256"].mint(claims(**extra))
    assert principal(await verifier.verify(token, [AUD])).client_id == client_id


# --- algorithms refused ----------------------------------------------------------------


@pytest.mark.parametrize("alg", [*ASYMMETRIC, "HS256"])
async def test_alg_outside_the_allow_list_is_refused(
    build: Build, keys: dict[str, SigningKey], alg: str
) -> None:
    others = tuple(a for a in ASYMMETRIC if a != alg)
    verifier = await build(issuer(algorithms=others))
    if alg == "HS256":
        token = pyjwt.encode(claims(), HS_SECRET, algorithm="HS256")
    else:
        token = keys[alg].mint(claims())
    assert failure(await verifier.verify(token, [AUD])) == "alg_not_allowed"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_none_is_refused_even_when_listed(build: Build, alg: str) -> None:
    verifier = await build(issuer(algorithms=("none", "None", "NONE", "ES256")))
    token = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims())}."
    assert failure(await verifier.verify(token, [AUD])) == "alg_not_allowed"


async def test_hs256_listed_without_a_secret_is_refused(build: Build) -> None:
    verifier = await build(issuer(algorithms=("HS256", "ES256")))
    token = pyjwt.encode(claims(), HS_SECRET, algorithm="HS256")
    assert failure(await verifier.verify(token, [AUD])) == "alg_not_allowed"


async def test_unsupported_alg_in_allow_list_is_refused(build: Build) -> None:
    # A bundle listing RS512 must not make us verify it with some other routine.
    key = SigningKey.generate("RS256", kid="k")
    verifier = await build(issuer(algorithms=("RS512",)))
    private = serialization.load_pem_private_key(key.to_pem().encode(), password=None)
    token = pyjwt.encode(claims(), private, algorithm="RS512", headers={"kid": "k"})  # type: ignore[arg-type]
    assert failure(await verifier.verify(token, [AUD])) == "alg_not_allowed"


# --- algorithm confusion ---------------------------------------------------------------


def rsa_public_pem(key: SigningKey) -> bytes:
    private = serialization.load_pem_private_key(key.to_pem().encode(), password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_hs256_signed_with_the_rsa_public_key_fails_without_secret(
    build: Build, keys: dict[str, SigningKey]
) -> None:
    verifier = await build(issuer(algorithms=("RS256",)))
    pem = rsa_public_pem(keys["RS256"])
    token = craft({"alg": "HS256", "kid": keys["RS256"].kid}, claims(), hs256(pem))
    assert failure(await verifier.verify(token, [AUD])) == "alg_not_allowed"


async def test_hs256_signed_with_the_rsa_public_key_fails_with_a_secret(
    build: Build, keys: dict[str, SigningKey]
) -> None:
    # Even when HS256 is allowed, the HMAC key is the configured secret, never a JWKS key.
    verifier = await build(issuer(algorithms=("RS256", "HS256"), hs256_secret=HS_SECRET))
    rsa_key = keys["RS256"]
    for secret in (rsa_public_pem(rsa_key), json.dumps(rsa_key.public_jwk()).encode()):
        token = craft({"alg": "HS256", "kid": rsa_key.kid}, claims(), hs256(secret))
        assert failure(await verifier.verify(token, [AUD])) == "bad_signature"


async def test_es256_header_with_an_rsa_kid_fails(
    build: Build, keys: dict[str, SigningKey]
) -> None:
    verifier = await build()
    good = keys["ES256"].mint(claims())
    _, payload, signature = good.split(".")
    header = segment({"alg": "ES256", "kid": keys["RS256"].kid})
    result = await verifier.verify(f"{header}.{payload}.{signature}", [AUD])
    assert failure(result) == "bad_signature"


async def test_key_declaring_rs256_does_not_verify_ps256(
    build: Build, keys: dict[str, SigningKey]
) -> None:
    # The RS256 key's JWK says alg=RS256: a PS256 token under its kid must not verify,
    # even though it is really signed by that RSA key.
    verifier = await build()
    private = serialization.load_pem_private_key(keys["RS256"].to_pem().encode(), password=None)
    token = pyjwt.encode(
        claims(),
        private,  # type: ignore[arg-type]
        algorithm="PS256",
        headers={"kid": keys["RS256"].kid},
    )
    assert failure(await verifier.verify(token, [AUD])) == "bad_signature"


async def test_relabelled_alg_fails(build: Build, keys: dict[str, SigningKey]) -> None:
    verifier = await build(issuer(algorithms=("RS256", "PS256")))
    _, payload, signature = keys["RS256"].mint(claims()).split(".")
    header = segment({"alg": "PS256", "kid": keys["RS256"].kid})
    result = await verifier.verify(f"{header}.{payload}.{signature}", [AUD])
    assert failure(result) == "bad_signature"


# --- issuers ---------------------------------------------------------------------------


async def test_several_issuers_at_once(
    build: Build,
    keys: dict[str, SigningKey],
    fetcher: FakeJwksFetcher,
    tmp_path: Path,
) -> None:
    other_key = SigningKey.generate("ES256", kid="other-1")
    jwks_file = tmp_path / "other.json"
    jwks_file.write_text(json.dumps(other_key.jwks()))
    verifier = await build(
        issuer(),
        issuer(
            name="partner",
            issuer="https://partner.example.org/",
            jwks_url=None,
            jwks_file=str(jwks_file),
            algorithms=("ES256",),
        ),
        issuer(
            name="legacy",
            issuer="legacy-idp",
            jwks_url=None,
            algorithms=("HS256",),
            hs256_secret=HS_SECRET,
        ),
    )
    main_token = keys["ES256"].mint(claims())
    partner_token = other_key.mint(claims(iss="https://partner.example.org/"))
    legacy_token = pyjwt.encode(claims(iss="legacy-idp"), HS_SECRET, algorithm="HS256")
    assert principal(await verifier.verify(main_token, [AUD])).issuer == "main"
    assert principal(await verifier.verify(partner_token, [AUD])).issuer == "partner"
    assert principal(await verifier.verify(legacy_token, [AUD])).issuer == "legacy"

    # A token claiming one issuer but signed with another's key finds no such key.
    forged = other_key.mint(claims())
    assert failure(await verifier.verify(forged, [AUD])) == "unknown_kid"
    forged_partner = keys["ES256"].mint(claims(iss="https://partner.example.org/"))
    assert failure(await verifier.verify(forged_partner, [AUD])) == "unknown_kid"


async def test_iss_must_match_exactly(build: Build, keys: dict[str, SigningKey]) -> None:
    verifier = await build()
    for iss in (ISS + "/", ISS.upper(), "https://evil.example.com"):
        token = keys["ES256"].mint(claims(iss=iss))
        assert failure(await verifier.verify(token, [AUD])) == "unknown_issuer"


@pytest.mark.parametrize("iss", [None, 42, ["https://idp.example.com"]])
async def test_missing_or_odd_iss_is_unknown_issuer(
    build: Build, keys: dict[str, SigningKey], iss: Any
) -> None:
    verifier = await build()
    token = craft({"alg": "HS256"}, claims(iss=iss), hs256(b"x"))
    assert failure(await verifier.verify(token, [AUD])) == "unknown_issuer"


def test_duplicate_iss_is_refused() -> None:
    with pytest.raises(ValueError, match="same `iss`"):
        JwtVerifier([issuer(name="a"), issuer(name="b")])


# --- size and shape --------------------------------------------------------------------


async def test_oversized_input_is_refused_before_parsing(build: Build) -> None:
    verifier = await build()
    assert failure(await verifier.verify("!" * 8193, [AUD])) == "token_too_large"
    assert failure(await verifier.verify("!" * 8192, [AUD])) == "malformed_token"


async def test_max_token_bytes_is_per_issuer(build: Build, keys: dict[str, SigningKey]) -> None:
    verifier = await build(
        issuer(max_token_bytes=600),
        issuer(name="roomy", issuer="https://roomy.example.com", max_token_bytes=4096),
    )
    padding = {"pad": "p" * 700}
    small_iss = keys["ES256"].mint(claims(**padding))
    roomy_iss = keys["ES256"].mint(claims(iss="https://roomy.example.com", **padding))
    assert failure(await verifier.verify(small_iss, [AUD])) == "token_too_large"
    assert principal(await verifier.verify(roomy_iss, [AUD])).issuer == "roomy"


def _malformed_cases() -> list[str]:
    good_payload = segment(claims())
    sig = b64(b"sig")
    bad_utf8 = b64(b"\xff\xfe")
    deep = b64(b"[" * 5000)
    return [
        "",
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "é.b.c",
        "ab+c.de/f.ghi",
        "ab==.cd.ef",
        f"{segment({'alg': 'ES256'})} .{good_payload}.{sig}",
        f"a.{good_payload}.{sig}",  # header: impossible base64 length
        f"{b64(b'not json')}.{good_payload}.{sig}",
        f"{segment(['alg', 'ES256'])}.{good_payload}.{sig}",
        f"{segment({'alg': 'ES256'})}.{b64(b'not json')}.{sig}",
        f"{segment({'alg': 'ES256'})}.{segment('a string')}.{sig}",
        f"{segment({'alg': 'ES256'})}.{bad_utf8}.{sig}",
        f"{segment({'alg': 'ES256'})}.{segment([[[[[[]]]]]] * 2)}.{sig}",
        f"{segment({'alg': 'ES256'})}.{deep}.{sig}",  # nesting deeper than the recursion limit
        f"{segment({'typ': 'JWT'})}.{good_payload}.{sig}",  # no alg
        f"{segment({'alg': 5})}.{good_payload}.{sig}",
        f"{segment({'alg': 'ES256', 'kid': 7})}.{good_payload}.{sig}",
        f"{segment({'alg': 'ES256', 'crit': ['b64'], 'b64': False})}.{good_payload}.{sig}",
        f"{segment({'alg': 'ES256'})}.{good_payload}.a",  # signature: impossible length
    ]


@pytest.mark.parametrize("token", _malformed_cases())
async def test_malformed_tokens(build: Build, token: str) -> None:
    verifier = await build()
    assert failure(await verifier.verify(token, [AUD])) == "malformed_token"


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": "soon"},
        {"exp": True},
        {"exp": float("nan")},  # NaN compares false with everything: never "expired"
        {"exp": float("inf")},
        {"exp": 10**400},  # overflows float arithmetic
        {"nbf": "now"},
        {"nbf": float("-inf")},
        {"nbf": -(10**400)},
        {"aud": 5},
        {"aud": [AUD, 5]},
        {"scope": ["a"]},
        {"scp": [1]},
    ],
)
async def test_claims_of_the_wrong_type_are_malformed(
    build: Build, keys: dict[str, SigningKey], bad: dict[str, Any]
) -> None:
    verifier = await build()
    token = keys["ES256"].mint(claims(**bad))
    assert failure(await verifier.verify(token, [AUD])) == "malformed_token"


# --- keys ------------------------------------------------------------------------------


async def test_unknown_kid_refetches_at_most_once_per_interval(
    build: Build, keys: dict[str, SigningKey], fetcher: FakeJwksFetcher, clock: FakeClock
) -> None:
    verifier = await build(issuer(jwks_min_refresh_seconds=30))
    assert fetcher.count() == 1
    stranger = SigningKey.generate("ES256", kid="garbage-1")
    clock.advance(31)
    assert failure(await verifier.verify(stranger.mint(claims()), [AUD])) == "unknown_kid"
    assert fetcher.count() == 2
    for n in range(5):
        other = SigningKey.generate("ES256", kid=f"garbage-{n + 2}")
        assert failure(await verifier.verify(other.mint(claims()), [AUD])) == "unknown_kid"
    assert fetcher.count() == 2  # rate-limited
    clock.advance(30)
    assert failure(await verifier.verify(stranger.mint(claims()), [AUD])) == "unknown_kid"
    assert fetcher.count() == 3


async def test_rotated_key_is_picked_up_after_a_failure(
    build: Build, keys: dict[str, SigningKey], fetcher: FakeJwksFetcher, clock: FakeClock
) -> None:
    verifier = await build()
    rotated = SigningKey.generate("ES256", kid="es256-2")
    token = rotated.mint(claims())
    assert failure(await verifier.verify(token, [AUD])) == "unknown_kid"  # rate-limited
    fetcher.documents[JWKS_URL] = {"keys": [keys["ES256"].public_jwk(), rotated.public_jwk()]}
    clock.advance(30)
    # The earlier failure was not cached: the same token now verifies.
    assert principal(await verifier.verify(token, [AUD])).subject == "user-1"


async def test_token_without_kid_tries_keys_of_its_type(
    build: Build, keys: dict[str, SigningKey]
) -> None:
    verifier = await build()
    es = serialization.load_pem_private_key(keys["ES256"].to_pem().encode(), password=None)
    token = pyjwt.encode(claims(), es, algorithm="ES256")  # type: ignore[arg-type]
    assert "kid" not in pyjwt.get_unverified_header(token)
    assert principal(await verifier.verify(token, [AUD])).subject == "user-1"


async def test_bad_signatures(build: Build, keys: dict[str, SigningKey]) -> None:
    verifier = await build()
    good = keys["ES256"].mint(claims())
    header, payload, signature = good.split(".")
    tampered = f"{header}.{segment(claims(sub='admin'))}.{signature}"
    assert failure(await verifier.verify(tampered, [AUD])) == "bad_signature"
    assert failure(await verifier.verify(f"{header}.{payload}.", [AUD])) == "bad_signature"
    impostor = SigningKey.generate("ES256", kid=keys["ES256"].kid)  # same kid, other key
    assert failure(await verifier.verify(impostor.mint(claims()), [AUD])) == "bad_signature"
    rs_header, rs_payload, rs_sig = keys["RS256"].mint(claims()).split(".")
    flipped = rs_sig[:10] + ("A" if rs_sig[10] != "A" else "B") + rs_sig[11:]
    assert failure(await verifier.verify(f"{rs_header}.{rs_payload}.{flipped}", [AUD])) == (
        "bad_signature"
    )


async def test_keys_unavailable_when_the_jwks_url_never_answered(
    build: Build, keys: dict[str, SigningKey], fetcher: FakeJwksFetcher
) -> None:
    fetcher.fail = True
    verifier = await build()  # start() logs and carries on
    assert failure(await verifier.verify(keys["ES256"].mint(claims()), [AUD])) == (
        "keys_unavailable"
    )


async def test_keys_unavailable_for_an_issuer_without_a_key_source(
    build: Build, keys: dict[str, SigningKey]
) -> None:
    verifier = await build(issuer(jwks_url=None))
    result = await verifier.verify(keys["ES256"].mint(claims()), [AUD])
    assert failure(result) == "keys_unavailable"


async def test_keys_unavailable_before_a_key_file_is_loaded(
    build: Build, keys: dict[str, SigningKey], tmp_path: Path
) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(keys["ES256"].jwks()))
    verifier = await build(issuer(jwks_url=None, jwks_file=str(jwks_file)), start=False)
    token = keys["ES256"].mint(claims())
    assert failure(await verifier.verify(token, [AUD])) == "keys_unavailable"
    await verifier.start()
    assert principal(await verifier.verify(token, [AUD])).subject == "user-1"


async def test_start_fails_on_a_bad_key_file(build: Build, tmp_path: Path) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text("{not json")
    with pytest.raises(KeySourceError, match="not valid JSON"):
        await build(issuer(jwks_url=None, jwks_file=str(jwks_file)))


# --- time ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "HS256"])
async def test_missing_exp(build: Build, keys: dict[str, SigningKey], alg: str) -> None:
    verifier = await build(issuer(algorithms=("ES256", "HS256"), hs256_secret=HS_SECRET))
    if alg == "HS256":
        token = craft({"alg": "HS256"}, claims(exp=None), hs256(HS_SECRET))
    else:
        es = serialization.load_pem_private_key(keys["ES256"].to_pem().encode(), password=None)
        headers = {"kid": keys["ES256"].kid}
        token = pyjwt.encode(claims(exp=None), es, algorithm="ES256", headers=headers)  # type: ignore[arg-type]
    assert failure(await verifier.verify(token, [AUD])) == "missing_exp"


@pytest.mark.parametrize(
    ("leeway", "exp_offset", "reason"),
    [
        (30.0, -29, None),
        (30.0, -30, "token_expired"),
        (30.0, -3600, "token_expired"),
        (0.0, 1, None),
        (0.0, 0, "token_expired"),
    ],
)
async def test_expiry_with_leeway(
    build: Build,
    keys: dict[str, SigningKey],
    leeway: float,
    exp_offset: float,
    reason: str | None,
) -> None:
    verifier = await build(issuer(leeway_seconds=leeway))
    result = await verifier.verify(keys["ES256"].mint(claims(exp=NOW + exp_offset)), [AUD])
    if reason is None:
        assert principal(result).expires_at == NOW + exp_offset
    else:
        assert failure(result) == reason


@pytest.mark.parametrize(
    ("leeway", "nbf_offset", "reason"),
    [
        (30.0, 29, None),
        (30.0, 30, None),
        (30.0, 31, "not_yet_valid"),
        (0.0, 0, None),
        (0.0, 1, "not_yet_valid"),
    ],
)
async def test_not_before_with_leeway(
    build: Build,
    keys: dict[str, SigningKey],
    leeway: float,
    nbf_offset: float,
    reason: str | None,
) -> None:
    verifier = await build(issuer(leeway_seconds=leeway))
    result = await verifier.verify(keys["ES256"].mint(claims(nbf=NOW + nbf_offset)), [AUD])
    if reason is None:
        assert principal(result).subject == "user-1"
    else:
        assert failure(result) == reason


# --- subject and audience --------------------------------------------------------------


@pytest.mark.parametrize("sub", [None, "", 42, ["user-1"]])
async def test_missing_subject(build: Build, keys: dict[str, SigningKey], sub: Any) -> None:
    verifier = await build()
    token = keys["ES256"].mint(claims(sub=sub))
    assert failure(await verifier.verify(token, [AUD])) == "missing_subject"


@pytest.mark.parametrize(
    ("token_aud", "caller", "ok"),
    [
        (AUD, [AUD], True),
        ("HTTPS://MCP.Example.COM/mcp/", [AUD], True),
        (AUD, ["https://MCP.example.com/mcp/"], True),
        ([AUD, "https://other.example.com"], ["https://other.example.com/"], True),
        (["https://a.example.com", "https://b.example.com"], ["x", "https://b.example.com"], True),
        ("https://mcp.example.com/MCP", [AUD], False),  # paths are case-sensitive
        ("https://mcp.example.com/mcp/tools", [AUD], False),
        ("https://evil.example.com/mcp", [AUD], False),
        ("http://mcp.example.com/mcp", [AUD], False),
        ([], [AUD], False),
        (None, [AUD], False),
        (AUD, [], False),
    ],
)
async def test_audience(
    build: Build, keys: dict[str, SigningKey], token_aud: Any, caller: list[str], ok: bool
) -> None:
    verifier = await build()
    token = keys["ES256"].mint(claims(aud=token_aud))
    result = await verifier.verify(token, caller)
    if ok:
        assert principal(result).subject == "user-1"
    else:
        assert failure(result) == "wrong_audience"


async def test_a_bare_string_audience_is_one_audience(
    build: Build, keys: dict[str, SigningKey]
) -> None:
    verifier = await build()
    token = keys["ES256"].mint(claims(aud="h"))
    assert failure(await verifier.verify(token, "https://h")) == "wrong_audience"
    assert principal(await verifier.verify(keys["ES256"].mint(claims()), AUD)).subject == "user-1"


async def test_issuer_audiences_are_accepted_for_any_upstream(
    build: Build, keys: dict[str, SigningKey]
) -> None:
    verifier = await build(issuer(audiences=("api://policy-gateway/",)))
    token = keys["ES256"].mint(claims(aud=["api://policy-gateway"]))
    assert principal(await verifier.verify(token, ["https://any.example.com"])).subject == "user-1"
    assert principal(await verifier.verify(token, [])).subject == "user-1"
    other = keys["ES256"].mint(claims(aud="api://something-else"))
    assert failure(await verifier.verify(other, ["https://any.example.com"])) == "wrong_audience"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("HTTPS://Example.COM/Path/", "https://example.com/Path"),
        ("https://example.com", "https://example.com"),
        ("https://example.com/", "https://example.com"),
        ("https://EXAMPLE.com:8443/a?Q=1", "https://example.com:8443/a?Q=1"),
        ("my-API/", "my-API"),
        ("urn:Example:Thing", "urn:Example:Thing"),
    ],
)
def test_canonical_audience(raw: str, canonical: str) -> None:
    assert canonical_audience(raw) == canonical


# --- the verified-token cache ----------------------------------------------------------


async def test_cache_hit_skips_signature_and_key_lookup(
    build: Build,
    keys: dict[str, SigningKey],
    fetcher: FakeJwksFetcher,
    count_verifications: list[str],
) -> None:
    verifier = await build()
    token = keys["ES256"].mint(claims())
    first = principal(await verifier.verify(token, [AUD]))
    assert count_verifications == ["ES256"]
    fetcher.fail = True
    for _ in range(3):
        assert await verifier.verify(token, [AUD]) is first
    assert count_verifications == ["ES256"]
    assert fetcher.count() == 1


async def test_audience_is_checked_on_every_cached_call(
    build: Build, keys: dict[str, SigningKey], count_verifications: list[str]
) -> None:
    verifier = await build()
    token = keys["ES256"].mint(claims(aud=AUD))
    assert principal(await verifier.verify(token, [AUD])).subject == "user-1"
    assert failure(await verifier.verify(token, ["https://other.example.com"])) == "wrong_audience"
    assert principal(await verifier.verify(token, [AUD + "/"])).subject == "user-1"
    assert count_verifications == ["ES256"]


async def test_a_wrong_audience_first_still_caches_the_verification(
    build: Build, keys: dict[str, SigningKey], count_verifications: list[str]
) -> None:
    verifier = await build()
    token = keys["ES256"].mint(claims())
    assert failure(await verifier.verify(token, ["https://other.example.com"])) == "wrong_audience"
    assert principal(await verifier.verify(token, [AUD])).subject == "user-1"
    assert count_verifications == ["ES256"]


async def test_cache_entry_expires_at_exp(
    build: Build, keys: dict[str, SigningKey], clock: FakeClock, count_verifications: list[str]
) -> None:
    verifier = await build(issuer(leeway_seconds=30))
    token = keys["ES256"].mint(claims(exp=NOW + 100))
    assert principal(await verifier.verify(token, [AUD]))
    clock.advance(99.5)
    assert principal(await verifier.verify(token, [AUD]))
    assert len(count_verifications) == 1
    clock.advance(0.5)  # exactly exp: the cache entry is gone, leeway still accepts
    assert principal(await verifier.verify(token, [AUD]))
    assert len(count_verifications) == 2
    clock.advance(10)  # accepted in the leeway window but never cached beyond exp
    assert principal(await verifier.verify(token, [AUD]))
    assert len(count_verifications) == 3
    clock.advance(20)
    assert failure(await verifier.verify(token, [AUD])) == "token_expired"
    assert len(count_verifications) == 4


async def test_cache_is_a_bounded_lru(
    build: Build, keys: dict[str, SigningKey], count_verifications: list[str]
) -> None:
    verifier = await build(cache_size=2)
    a, b, c = (keys["ES256"].mint(claims(sub=f"user-{n}")) for n in "abc")
    for token in (a, b, a, c):  # c evicts b, the least recently used
        assert principal(await verifier.verify(token, [AUD]))
    assert len(count_verifications) == 3
    assert principal(await verifier.verify(a, [AUD]))
    assert len(count_verifications) == 3
    assert principal(await verifier.verify(b, [AUD]))
    assert len(count_verifications) == 4


async def test_cache_size_zero_disables_the_cache(
    build: Build, keys: dict[str, SigningKey], count_verifications: list[str]
) -> None:
    verifier = await build(cache_size=0)
    token = keys["ES256"].mint(claims())
    for _ in range(3):
        assert principal(await verifier.verify(token, [AUD]))
    assert len(count_verifications) == 3


async def test_failures_are_not_cached(
    build: Build, keys: dict[str, SigningKey], count_verifications: list[str]
) -> None:
    verifier = await build()
    good = keys["ES256"].mint(claims())
    header, _, signature = good.split(".")
    forged = f"{header}.{segment(claims(sub='admin'))}.{signature}"
    for _ in range(3):
        assert failure(await verifier.verify(forged, [AUD])) == "bad_signature"
    assert len(count_verifications) == 3


# --- nothing secret in descriptions or logs --------------------------------------------


async def test_descriptions_and_logs_carry_no_token_or_claim(
    build: Build, keys: dict[str, SigningKey], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = await build(issuer(leeway_seconds=0))
    marker = "SECRET-MARKER-7f3a"
    stranger = SigningKey.generate("ES256", kid=marker + "-kid")
    tokens = [
        keys["ES256"].mint(claims(sub=marker, aud=marker)),  # wrong_audience
        keys["ES256"].mint(claims(sub=marker, exp=NOW - 5)),  # token_expired
        keys["ES256"].mint(claims(sub=marker, nbf=NOW + 50)),  # not_yet_valid
        keys["ES256"].mint(claims(iss=marker)),  # unknown_issuer
        keys["ES256"].mint(claims(sub=None, scope=marker)),  # missing_subject
        stranger.mint(claims(sub=marker)),  # unknown_kid
        craft({"alg": marker}, claims(sub=marker), hs256(b"k")),  # alg_not_allowed
        f"{segment({'alg': 'ES256'})}.{b64(marker.encode())}.x",  # malformed_token
    ]
    clock.advance(31)
    reasons = set()
    for token in tokens:
        result = await verifier.verify(token, [AUD])
        assert isinstance(result, IdentityFailure)
        reasons.add(result.reason)
        assert marker not in result.description
        assert token not in result.description
        assert result.description.endswith(".")
        assert result.description.count(". ") == 0  # one short sentence
    assert reasons == {
        "wrong_audience",
        "token_expired",
        "not_yet_valid",
        "unknown_issuer",
        "missing_subject",
        "unknown_kid",
        "alg_not_allowed",
        "malformed_token",
    }
    for record in caplog.records:
        assert marker not in record.getMessage()
