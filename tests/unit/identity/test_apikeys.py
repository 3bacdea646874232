"""ApiKeyVerifier: keys are matched by their SHA-256, never stored or compared in clear."""

from __future__ import annotations

import pytest

from policy_service.identity.apikeys import ApiKeyVerifier, hash_api_key
from policy_service.identity.config import ApiKeyEntry
from policy_service.identity.principal import CredentialKind, IdentityFailure, Principal

KEY = "sk-live-0123456789abcdef"


def entry(key: str = KEY, **overrides: object) -> ApiKeyEntry:
    values: dict[str, object] = {
        "id": "ci-bot",
        "sha256": hash_api_key(key),
        "subject": "service:ci",
        "scopes": frozenset({"tools:read"}),
    }
    values.update(overrides)
    return ApiKeyEntry(**values)  # type: ignore[arg-type]


def test_hash_api_key_is_lowercase_hex_sha256() -> None:
    # SHA-256("abc") from FIPS 180-2.
    assert hash_api_key("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    # Non-ASCII keys hash their UTF-8 bytes (c3 a9), so every tool agrees on the digest.
    assert hash_api_key("é") == ("4a99557e4033c3539de2eb65472017cad5f9557f7a0625a09f1c3f6e2ba69c4c")


def test_known_key_gives_its_principal() -> None:
    verifier = ApiKeyVerifier([entry(), entry("other-key", id="ops", subject="service:ops")])
    result = verifier.verify(KEY)
    assert result == Principal(
        subject="service:ci",
        issuer="api-key",
        client_id="ci-bot",
        scopes=frozenset({"tools:read"}),
        credential=CredentialKind.API_KEY,
        expires_at=None,
    )
    other = verifier.verify("other-key")
    assert isinstance(other, Principal)
    assert other.client_id == "ops"


@pytest.mark.parametrize(
    "presented", ["", "sk-live-0123456789abcdeF", KEY + " ", hash_api_key(KEY)]
)
def test_anything_else_is_unknown(presented: str) -> None:
    result = ApiKeyVerifier([entry()]).verify(presented)
    assert isinstance(result, IdentityFailure)
    assert result.reason == "unknown_api_key"
    assert not presented or presented not in result.description


def test_uppercase_hash_in_the_bundle_is_accepted() -> None:
    verifier = ApiKeyVerifier([entry(sha256=hash_api_key(KEY).upper())])
    assert isinstance(verifier.verify(KEY), Principal)


@pytest.mark.parametrize("digest", ["", "abc", "g" * 64, hash_api_key(KEY) + "00"])
def test_a_malformed_hash_is_refused(digest: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        ApiKeyVerifier([entry(sha256=digest)])


def test_the_same_key_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        ApiKeyVerifier([entry(), entry(id="copy", sha256=hash_api_key(KEY).upper())])


def test_no_entries_refuses_everything() -> None:
    result = ApiKeyVerifier([]).verify(KEY)
    assert isinstance(result, IdentityFailure)
    assert result.reason == "unknown_api_key"
