"""Private key material never ships in a bundle: found in any file, refused by the loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from policy_service.bundles.archive import pack_bundle, unpack_bundle
from policy_service.bundles.loader import load_bundle_files, read_bundle
from policy_service.bundles.private_keys import find_private_key
from policy_service.bundles.signing import generate_signing_key, load_signed_bundle, sign_bundle
from policy_service.errors import BundleError
from tests.support.bundles import write_test_bundle

KEY = generate_signing_key("ed25519")
_ED = Ed25519PrivateKey.generate()
_EC = ec.generate_private_key(ec.SECP256R1())
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(
    key: PrivateKeyTypes, encoding_format: serialization.PrivateFormat, password: bytes = b""
) -> bytes:
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password:
        encryption = serialization.BestAvailableEncryption(password)
    return key.private_bytes(serialization.Encoding.PEM, encoding_format, encryption)


PEM_KEYS = {
    "pkcs8": (_pem(_ED, serialization.PrivateFormat.PKCS8), "-----BEGIN PRIVATE KEY-----"),
    "encrypted pkcs8": (
        _pem(_EC, serialization.PrivateFormat.PKCS8, b"secret"),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----",
    ),
    "rsa pkcs1": (
        _pem(_RSA, serialization.PrivateFormat.TraditionalOpenSSL),
        "-----BEGIN RSA PRIVATE KEY-----",
    ),
    "ec sec1": (
        _pem(_EC, serialization.PrivateFormat.TraditionalOpenSSL),
        "-----BEGIN EC PRIVATE KEY-----",
    ),
    "openssh": (
        _pem(_ED, serialization.PrivateFormat.OpenSSH),
        "-----BEGIN OPENSSH PRIVATE KEY-----",
    ),
}


@pytest.mark.parametrize("kind", PEM_KEYS, ids=str)
def test_every_kind_of_pem_private_key_is_found(kind: str) -> None:
    pem, label = PEM_KEYS[kind]
    assert find_private_key(pem) == f"a PEM private key ('{label}')"
    # Anywhere in a file: pasted into a YAML comment, after other text.
    assert find_private_key(b"# note\nkey: |\n  " + pem) == f"a PEM private key ('{label}')"


def _jwks(**members: str) -> bytes:
    return json.dumps(
        {"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y", **members}]}
    ).encode()


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi"])
def test_a_jwk_with_a_private_member_is_found(member: str) -> None:
    assert find_private_key(_jwks(**{member: "secret"})) == f"a private JWK (members '{member}')"


def test_a_bare_private_jwk_and_a_symmetric_jwk_are_found() -> None:
    bare = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": "x", "d": "secret"}).encode()
    assert find_private_key(bare) == "a private JWK (members 'd')"
    oct_key = json.dumps([{"kty": "oct", "k": "c2VjcmV0"}]).encode()
    assert find_private_key(oct_key) == "a private JWK (members 'k')"


@pytest.mark.parametrize(
    "content",
    [
        _jwks(),  # a public JWKS
        json.dumps({"kty": "EC", "k": "not secret for EC"}).encode(),
        json.dumps({"d": "not a JWK: no kty"}).encode(),
        KEY.verification_key.public_pem(),
        b"version: v1\nrevision: r\n",
        b"{not json",
        b"\x00\xff binary",
    ],
    ids=["public-jwks", "k-of-ec", "no-kty", "public-pem", "yaml", "broken-json", "binary"],
)
def test_public_and_ordinary_files_are_not_flagged(content: bytes) -> None:
    assert find_private_key(content) is None


def _message(name: str, found: str) -> str:
    return (
        f"file '{name}' holds {found}; private keys must never ship in a bundle: move it out "
        "of the bundle"
    )


def test_a_directory_bundle_holding_a_key_file_is_refused(tmp_path: Path) -> None:
    write_test_bundle(tmp_path)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "whatever.txt").write_bytes(KEY.private_pem())

    with pytest.raises(BundleError) as caught:
        load_bundle_files(read_bundle(tmp_path), environ={})

    assert [problem.message for problem in caught.value.problems] == [
        _message("keys/whatever.txt", "a PEM private key ('-----BEGIN PRIVATE KEY-----')")
    ]


def test_a_jwks_file_a_single_file_bundle_names_is_checked(tmp_path: Path) -> None:
    test_bundle = write_test_bundle(tmp_path)
    jwks = tmp_path / "jwks.json"
    document = json.loads(jwks.read_text())
    document["keys"][0]["d"] = "c2VjcmV0"
    jwks.write_text(json.dumps(document))

    with pytest.raises(BundleError) as caught:
        load_bundle_files(read_bundle(test_bundle.path), environ={})

    assert [str(problem) for problem in caught.value.problems] == [
        f"{test_bundle.path}: " + _message("jwks.json", "a private JWK (members 'd')")
    ]


def test_a_signed_archive_carrying_a_key_is_refused_on_load(tmp_path: Path) -> None:
    # As another tool could build it: signed (the signature is fine), with the key inside.
    write_test_bundle(tmp_path)
    files = read_bundle(tmp_path)
    files.files["signing.key"] = KEY.private_pem()
    files.signature = sign_bundle(files, KEY, revision="test-1")
    unpacked = unpack_bundle(pack_bundle(files), "https://bundles.test.example/b.tar.gz")

    with pytest.raises(BundleError) as caught:
        load_signed_bundle(unpacked, KEY.verification_key, environ={})

    assert [problem.message for problem in caught.value.problems] == [
        _message("signing.key", "a PEM private key ('-----BEGIN PRIVATE KEY-----')")
    ]
