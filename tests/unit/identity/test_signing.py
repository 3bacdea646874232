"""SigningKey: generation, PEM round trips, published JWKs and minted tokens."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policy_service.identity.config import IssuerConfig
from policy_service.identity.jwt import JwtVerifier
from policy_service.identity.principal import Principal
from policy_service.identity.signing import SIGNING_ALGORITHMS, SigningKey
from policy_service.testing import FakeClock

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
EXPECTED_MEMBERS = {
    "ES256": {"kty", "crv", "x", "y", "kid", "alg", "use"},
    "RS256": {"kty", "n", "e", "kid", "alg", "use"},
    "PS256": {"kty", "n", "e", "kid", "alg", "use"},
    "EdDSA": {"kty", "crv", "x", "kid", "alg", "use"},
}


def payload(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {alg: SigningKey.generate(alg) for alg in SIGNING_ALGORITHMS}


@pytest.mark.parametrize("alg", SIGNING_ALGORITHMS)
def test_minted_tokens_verify_with_pyjwt(keys: dict[str, SigningKey], alg: str) -> None:
    key = keys[alg]
    token = key.mint({"iss": "dev", "sub": "alice", "aud": "x"}, now=1_000_000, lifetime_seconds=60)
    header = pyjwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
    public = pyjwt.PyJWK(key.public_jwk())
    decoded = pyjwt.decode(
        token, public, algorithms=[alg], audience="x", options={"verify_exp": False}
    )
    assert decoded == {"iss": "dev", "sub": "alice", "aud": "x", "iat": 1_000_000, "exp": 1_000_060}


@pytest.mark.parametrize("alg", SIGNING_ALGORITHMS)
async def test_minted_tokens_verify_with_our_verifier(
    keys: dict[str, SigningKey], alg: str, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys[alg].jwks()))
    clock = FakeClock()
    verifier = JwtVerifier(
        [IssuerConfig("dev", "https://dev", (alg,), jwks_file=str(path))], clock=clock
    )
    await verifier.start()
    token = keys[alg].mint({"iss": "https://dev", "sub": "alice", "aud": "urn:x"}, now=clock.now())
    result = await verifier.verify(token, ["urn:x"])
    assert isinstance(result, Principal)
    assert result.subject == "alice"


@pytest.mark.parametrize("alg", SIGNING_ALGORITHMS)
def test_public_jwk_has_only_public_members(keys: dict[str, SigningKey], alg: str) -> None:
    jwk = keys[alg].public_jwk()
    assert set(jwk) == EXPECTED_MEMBERS[alg]
    assert not PRIVATE_MEMBERS & set(jwk)
    assert jwk["alg"] == alg
    assert jwk["use"] == "sig"
    assert keys[alg].jwks() == {"keys": [jwk]}


@pytest.mark.parametrize("alg", SIGNING_ALGORITHMS)
def test_pem_round_trip_keeps_the_key_and_kid(keys: dict[str, SigningKey], alg: str) -> None:
    pem = keys[alg].to_pem()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    again = SigningKey.from_pem(pem, alg)
    assert again.public_jwk() == keys[alg].public_jwk()
    assert again.kid == keys[alg].kid
    assert SigningKey.from_pem(pem.encode(), alg, kid="named").kid == "named"


def test_rs256_and_ps256_keys_are_interchangeable_rsa(keys: dict[str, SigningKey]) -> None:
    as_ps = SigningKey.from_pem(keys["RS256"].to_pem(), "PS256")
    assert as_ps.public_jwk()["n"] == keys["RS256"].public_jwk()["n"]
    assert as_ps.alg == "PS256"


@pytest.mark.parametrize(
    ("have", "want"), [("ES256", "RS256"), ("RS256", "EdDSA"), ("EdDSA", "ES256")]
)
def test_from_pem_refuses_a_key_of_the_wrong_type(
    keys: dict[str, SigningKey], have: str, want: str
) -> None:
    with pytest.raises(ValueError, match=f"not of the type {want} needs"):
        SigningKey.from_pem(keys[have].to_pem(), want)


def test_from_pem_refuses_garbage_without_echoing_it() -> None:
    garbage = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ValueError, match="not an unencrypted PEM private key") as info:
        SigningKey.from_pem(garbage, "ES256")
    assert "c2VjcmV0" not in str(info.value)


@pytest.mark.parametrize("alg", ["HS256", "RS512", "none", "ES384"])
def test_unsupported_algorithms_are_refused(alg: str) -> None:
    with pytest.raises(ValueError, match="unsupported signing algorithm"):
        SigningKey.generate(alg)


def test_default_kid_is_the_rfc_7638_thumbprint() -> None:
    # RFC 8037 appendix A.1 and A.3: an Ed25519 key and its JWK thumbprint.
    d = base64.urlsafe_b64decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(d), "EdDSA")
    assert key.public_jwk()["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_generated_kids_differ_and_explicit_kid_wins() -> None:
    assert SigningKey.generate().kid != SigningKey.generate().kid
    assert SigningKey.generate("EdDSA", kid="dev-1").kid == "dev-1"


def test_mint_sets_iat_and_exp_unless_given(keys: dict[str, SigningKey]) -> None:
    key = keys["ES256"]
    token = key.mint({"sub": "a"}, now=1_000.7, lifetime_seconds=120)
    assert payload(token) == {"sub": "a", "iat": 1_000, "exp": 1_120}
    token = key.mint({"sub": "a", "iat": 5, "exp": 10}, now=1_000)
    assert payload(token) == {"sub": "a", "iat": 5, "exp": 10}
    default = payload(key.mint({"sub": "a"}))
    assert default["exp"] - default["iat"] == 3600
