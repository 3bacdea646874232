"""Signed bundles: round trips, and every way a signature check fails, with its message pinned.

The failure messages are what a security team reads when a gateway refuses a bundle at
start or on reload, so each is distinct and each is fixed here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.api_jws import PyJWS

from policy_service.bundles.files import BundleFileError, BundleFiles
from policy_service.bundles.loader import load_bundle_files, read_bundle
from policy_service.bundles.signing import (
    MANIFEST_FORMAT,
    PASSPHRASE_ENV_VAR,
    SIGNATURE_TYPE,
    BundleSigningKey,
    BundleVerificationKey,
    generate_signing_key,
    load_signed_bundle,
    load_signing_key,
    load_verification_key,
    sign_bundle,
    signature_name,
    signed_key_id,
    verification_keys,
    verify_bundle,
)
from policy_service.errors import BundleError, ConfigError
from tests.support.bundles import write_test_bundle

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ED25519 = generate_signing_key("ed25519")
ES256 = generate_signing_key("es256")
OTHER_ED25519 = generate_signing_key("ed25519")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_on_disk(
    path: Path,
    key: BundleSigningKey,
    *,
    revision: str | None = None,
    load_first: bool = True,
) -> Path:
    """Sign the bundle at ``path`` (file or directory) as ``policy-service sign`` would."""
    files = read_bundle(path)
    bundle_revision = load_bundle_files(files, environ={}).revision if load_first else "test-1"
    signature = sign_bundle(files, key, revision=revision or bundle_revision, now=NOW)
    directory = path if path.is_dir() else path.parent
    signature_path = directory / signature_name(files)
    signature_path.write_bytes(signature)
    return signature_path


def signed_payload(path: Path) -> bytes:
    """The manifest bytes inside the signature of the bundle file ``path`` (unverified)."""
    token = path.with_name(path.name + ".sig").read_text().strip()
    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))


def jws(payload: bytes, key: BundleSigningKey, **headers: object) -> bytes:
    header: dict[str, object] = {"kid": key.key_id, "typ": SIGNATURE_TYPE, **headers}
    return PyJWS().encode(payload, key.private_key, key.algorithm, headers=header).encode()


def manifest_bytes(**fields: object) -> bytes:
    document: dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "revision": "test-1",
        "entry": "bundle.yaml",
        "files": {},
        "signed_at": "2025-06-01T12:00:00Z",
        **fields,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def key_material(key: BundleSigningKey) -> list[str]:
    """Every form the key's secret (and public) bytes could leak in."""
    pem_lines = key.private_pem().decode().splitlines()[1:-1]
    public_lines = key.verification_key.public_pem().decode().splitlines()[1:-1]
    raw_public = key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return [*pem_lines, *public_lines, raw_public.hex(), _b64(raw_public)]


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ed25519", "es256"])
def test_single_file_bundle_round_trip_covers_its_jwks_file(tmp_path: Path, kind: str) -> None:
    key = generate_signing_key(kind)
    test_bundle = write_test_bundle(tmp_path)
    (tmp_path / "notes.txt").write_text("beside the bundle, but not part of it")
    signature_path = sign_on_disk(test_bundle.path, key)
    assert signature_path == tmp_path / "bundle.yaml.sig"

    files = read_bundle(test_bundle.path)
    manifest = verify_bundle(files, key.verification_key)

    assert manifest.format == MANIFEST_FORMAT
    assert manifest.revision == "test-1"
    assert manifest.entry == "bundle.yaml"
    assert manifest.signed_at == "2025-06-01T12:00:00Z"
    assert dict(manifest.files) == {
        "bundle.yaml": hashlib.sha256(test_bundle.path.read_bytes()).hexdigest(),
        "jwks.json": hashlib.sha256((tmp_path / "jwks.json").read_bytes()).hexdigest(),
    }
    assert files.sealed
    assert sorted(files.files) == ["bundle.yaml", "jwks.json"]
    bundle = load_signed_bundle(read_bundle(test_bundle.path), key.verification_key, environ={})
    assert bundle.revision == "test-1"


@pytest.mark.parametrize("kind", ["ed25519", "es256"])
def test_directory_bundle_round_trip(tmp_path: Path, kind: str) -> None:
    key = generate_signing_key(kind)
    write_test_bundle(tmp_path)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "README").write_text("every file of a directory is signed")
    sign_on_disk(tmp_path, key)

    files = read_bundle(tmp_path)
    bundle = load_signed_bundle(files, key.verification_key, environ={})

    assert bundle.revision == "test-1"
    assert sorted(files.files) == ["bundle.yaml", "jwks.json", "keys/README"]


def test_signature_is_a_jws_over_the_canonical_manifest(tmp_path: Path) -> None:
    test_bundle = write_test_bundle(tmp_path)
    signature_path = sign_on_disk(test_bundle.path, ES256)
    token = signature_path.read_bytes().strip()

    verified = PyJWS().decode_complete(
        token, ES256.verification_key.public_key, algorithms=["ES256"]
    )

    assert verified["header"] == {"alg": "ES256", "kid": ES256.key_id, "typ": SIGNATURE_TYPE}
    document = json.loads(verified["payload"])
    assert set(document) == {"format", "revision", "entry", "files", "signed_at"}
    assert verified["payload"] == json.dumps(
        document, sort_keys=True, separators=(",", ":")
    ).encode("utf-8")
    assert all(
        len(digest) == 64 and digest == digest.lower() for digest in document["files"].values()
    )


def test_key_id_is_derived_from_the_public_key() -> None:
    der = ED25519.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ED25519.key_id == hashlib.sha256(der).hexdigest()[:16]
    assert ED25519.verification_key.key_id == ED25519.key_id
    assert ED25519.algorithm == "EdDSA"
    assert ES256.algorithm == "ES256"


def test_a_verified_snapshot_reads_nothing_unsigned(tmp_path: Path) -> None:
    write_test_bundle(tmp_path)
    (tmp_path / "other.json").write_text("{}")
    sign_on_disk(tmp_path / "bundle.yaml", ED25519)
    files = read_bundle(tmp_path / "bundle.yaml")

    verify_bundle(files, ED25519.verification_key)

    with pytest.raises(BundleFileError) as caught:
        files.read("other.json")
    assert caught.value.message == "is not in the bundle"


def test_a_jwks_file_left_out_of_the_manifest_cannot_be_loaded(tmp_path: Path) -> None:
    # Signed without loading first, so the manifest lists only the YAML: the JWKS file on
    # disk beside it is unsigned and the sealed snapshot must not read it.
    test_bundle = write_test_bundle(tmp_path)
    sign_on_disk(test_bundle.path, ED25519, load_first=False)
    files = read_bundle(test_bundle.path)

    with pytest.raises(BundleError) as caught:
        load_signed_bundle(files, ED25519.verification_key, environ={})

    assert [str(problem) for problem in caught.value.problems] == [
        f"{test_bundle.path}: issuers[0].jwks_file: file 'jwks.json' is not in the bundle"
    ]


def test_without_a_key_a_signature_is_not_checked(tmp_path: Path) -> None:
    test_bundle = write_test_bundle(tmp_path)
    (tmp_path / "bundle.yaml.sig").write_text("not even a JWS")
    bundle = load_signed_bundle(read_bundle(test_bundle.path), None, environ={})
    assert bundle.revision == "test-1"


# --- every failure, with its message ----------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Prepare a signed bundle in a directory, break it one way; return what to verify."""

    prepare: Callable[[Path], tuple[Path, BundleVerificationKey]]
    message: str


def _signed_file(tmp_path: Path, key: BundleSigningKey = ED25519) -> Path:
    test_bundle = write_test_bundle(tmp_path)
    sign_on_disk(test_bundle.path, key)
    return test_bundle.path


def _signed_directory(tmp_path: Path, key: BundleSigningKey = ED25519) -> Path:
    write_test_bundle(tmp_path)
    sign_on_disk(tmp_path, key)
    return tmp_path


def yaml_changed_by_one_byte(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    text = path.read_bytes()
    path.write_bytes(text.replace(b"revision: test-1", b"revision: test-2"))
    return path, ED25519.verification_key


def jwks_changed(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(jwks.read_bytes() + b" ")
    return path, ED25519.verification_key


def file_added_to_directory(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_directory(tmp_path)
    (tmp_path / "extra.json").write_text("{}")
    return path, ED25519.verification_key


def listed_file_removed_from_directory(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_directory(tmp_path)
    (tmp_path / "jwks.json").unlink()
    return path, ED25519.verification_key


def listed_file_removed_beside_single_file(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    (tmp_path / "jwks.json").unlink()
    return path, ED25519.verification_key


def another_key(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    return _signed_file(tmp_path), OTHER_ED25519.verification_key


def es256_key_for_an_eddsa_signature(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    return _signed_file(tmp_path), ES256.verification_key


def eddsa_key_for_an_es256_signature(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    return _signed_file(tmp_path, ES256), ED25519.verification_key


def hs256_forged_with_the_public_key(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    # The classic confusion: HMAC "signed" with the public key's PEM as the secret.
    path = _signed_file(tmp_path)
    header = {"alg": "HS256", "kid": ED25519.key_id, "typ": SIGNATURE_TYPE}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(signed_payload(path))}"
    secret = ED25519.verification_key.public_pem()
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    (tmp_path / "bundle.yaml.sig").write_text(f"{signing_input}.{_b64(mac)}")
    return path, ED25519.verification_key


def alg_none(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    header = {"alg": "none", "kid": ED25519.key_id, "typ": SIGNATURE_TYPE}
    token = f"{_b64(json.dumps(header).encode())}.{_b64(signed_payload(path))}."
    (tmp_path / "bundle.yaml.sig").write_text(token)
    return path, ED25519.verification_key


def garbage_signature_file(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    (tmp_path / "bundle.yaml.sig").write_text("this is not a signature\n")
    return path, ED25519.verification_key


def another_key_claiming_this_kid(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    forged = jws(signed_payload(path), OTHER_ED25519, kid=ED25519.key_id)
    (tmp_path / "bundle.yaml.sig").write_bytes(forged)
    return path, ED25519.verification_key


def payload_swapped_under_a_valid_signature(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    header, _, signature = (tmp_path / "bundle.yaml.sig").read_text().strip().split(".")
    document = json.loads(signed_payload(path))
    document["revision"] = "test-9"
    payload = _b64(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
    (tmp_path / "bundle.yaml.sig").write_text(f"{header}.{payload}.{signature}")
    return path, ED25519.verification_key


def a_token_of_another_type(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    (tmp_path / "bundle.yaml.sig").write_bytes(jws(signed_payload(path), ED25519, typ="JWT"))
    return path, ED25519.verification_key


def manifest_of_another_format(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    payload = manifest_bytes(format="policy-service.bundle-manifest.v2")
    (tmp_path / "bundle.yaml.sig").write_bytes(jws(payload, ED25519))
    return path, ED25519.verification_key


def manifest_not_json(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    (tmp_path / "bundle.yaml.sig").write_bytes(jws(b"revision: test-1", ED25519))
    return path, ED25519.verification_key


def manifest_naming_a_file_outside(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    path = _signed_file(tmp_path)
    files = {"bundle.yaml": "0" * 64, "../secrets.json": "0" * 64}
    (tmp_path / "bundle.yaml.sig").write_bytes(jws(manifest_bytes(files=files), ED25519))
    return path, ED25519.verification_key


def manifest_revision_differs(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    test_bundle = write_test_bundle(tmp_path)
    sign_on_disk(test_bundle.path, ED25519, revision="test-0")
    return test_bundle.path, ED25519.verification_key


def manifest_entry_differs(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    # Signed as policy.yaml, then renamed: the signature still names the old entry.
    test_bundle = write_test_bundle(tmp_path)
    policy = tmp_path / "policy.yaml"
    test_bundle.path.rename(policy)
    sign_on_disk(policy, ED25519)
    policy.rename(tmp_path / "bundle.yaml")
    (tmp_path / "policy.yaml.sig").rename(tmp_path / "bundle.yaml.sig")
    return tmp_path / "bundle.yaml", ED25519.verification_key


def unsigned_with_a_key_configured(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    return write_test_bundle(tmp_path).path, ED25519.verification_key


def unsigned_file_of_another_name(tmp_path: Path) -> tuple[Path, BundleVerificationKey]:
    test_bundle = write_test_bundle(tmp_path)
    policy = tmp_path / "policy.yaml"
    shutil.move(test_bundle.path, policy)
    return policy, ED25519.verification_key


REFUSALS = {
    "yaml_changed_by_one_byte": Refusal(
        yaml_changed_by_one_byte, "file 'bundle.yaml' has changed since it was signed"
    ),
    "jwks_changed": Refusal(jwks_changed, "file 'jwks.json' has changed since it was signed"),
    "file_added_to_directory": Refusal(
        file_added_to_directory,
        "file 'extra.json' is in the bundle but not in the signed manifest",
    ),
    "listed_file_removed_from_directory": Refusal(
        listed_file_removed_from_directory,
        "file 'jwks.json' is signed but missing from the bundle",
    ),
    "listed_file_removed_beside_single_file": Refusal(
        listed_file_removed_beside_single_file,
        "file 'jwks.json' is signed but missing from the bundle",
    ),
    "another_key": Refusal(
        another_key,
        f"the bundle was signed by key '{ED25519.key_id}', not by the verification key "
        f"'{OTHER_ED25519.key_id}'",
    ),
    "es256_key_for_an_eddsa_signature": Refusal(
        es256_key_for_an_eddsa_signature,
        "the signature uses algorithm 'EdDSA', but the verification key accepts only 'ES256'",
    ),
    "eddsa_key_for_an_es256_signature": Refusal(
        eddsa_key_for_an_es256_signature,
        "the signature uses algorithm 'ES256', but the verification key accepts only 'EdDSA'",
    ),
    "hs256_forged_with_the_public_key": Refusal(
        hs256_forged_with_the_public_key,
        "the signature uses algorithm 'HS256', but the verification key accepts only 'EdDSA'",
    ),
    "alg_none": Refusal(
        alg_none,
        "the signature uses algorithm 'none', but the verification key accepts only 'EdDSA'",
    ),
    "garbage_signature_file": Refusal(
        garbage_signature_file,
        "the signature file 'bundle.yaml.sig' is not a JWS compact serialization",
    ),
    "another_key_claiming_this_kid": Refusal(
        another_key_claiming_this_kid,
        f"the signature is not valid for key '{ED25519.key_id}'",
    ),
    "payload_swapped_under_a_valid_signature": Refusal(
        payload_swapped_under_a_valid_signature,
        f"the signature is not valid for key '{ED25519.key_id}'",
    ),
    "a_token_of_another_type": Refusal(
        a_token_of_another_type,
        "the signature is not a policy bundle signature: its header must hold exactly alg, kid "
        "and typ 'policy-bundle+jws'",
    ),
    "manifest_of_another_format": Refusal(
        manifest_of_another_format,
        "the signed manifest is not valid: its format is 'policy-service.bundle-manifest.v2', "
        "expected 'policy-service.bundle-manifest.v1'",
    ),
    "manifest_not_json": Refusal(
        manifest_not_json, "the signed manifest is not valid: it is not JSON"
    ),
    "manifest_naming_a_file_outside": Refusal(
        manifest_naming_a_file_outside,
        "the signed manifest is not valid: file name '../secrets.json' is not a plain "
        "relative name",
    ),
    "manifest_revision_differs": Refusal(
        manifest_revision_differs,
        "the signed manifest is for revision 'test-0', but the bundle's revision is 'test-1'",
    ),
    "manifest_entry_differs": Refusal(
        manifest_entry_differs,
        "the signed manifest is for entry 'policy.yaml', but the bundle's entry is 'bundle.yaml'",
    ),
    "unsigned_with_a_key_configured": Refusal(
        unsigned_with_a_key_configured,
        "is not signed, but a verification key is configured: expected the signature file "
        "'bundle.yaml.sig'",
    ),
    "unsigned_file_of_another_name": Refusal(
        unsigned_file_of_another_name,
        "is not signed, but a verification key is configured: expected the signature file "
        "'policy.yaml.sig'",
    ),
}


@pytest.mark.parametrize("case", REFUSALS, ids=str)
def test_refusal_reports_one_exact_problem(tmp_path: Path, case: str) -> None:
    refusal = REFUSALS[case]
    path, key = refusal.prepare(tmp_path)
    files = read_bundle(path)

    with pytest.raises(BundleError) as caught:
        load_signed_bundle(files, key, environ={})

    [problem] = caught.value.problems
    assert (problem.file, problem.path, problem.message) == (files.source, "", refusal.message)
    text = str(caught.value)
    for secret in [*key_material(ED25519), *key_material(ES256), *key_material(OTHER_ED25519)]:
        assert secret not in text


def test_every_refusal_message_is_distinct() -> None:
    messages = [refusal.message for refusal in REFUSALS.values()]
    # Two pairs share a message on purpose: one fault, set up two ways.
    assert len(set(messages)) == len(messages) - 2


# --- keys --------------------------------------------------------------------------------------


def test_keys_load_from_pem_files(tmp_path: Path) -> None:
    for key in (ED25519, ES256):
        (tmp_path / "k.key").write_bytes(key.private_pem())
        (tmp_path / "k.pub").write_bytes(key.verification_key.public_pem())
        assert load_signing_key(tmp_path / "k.key").key_id == key.key_id
        loaded = load_verification_key(tmp_path / "k.pub")
        assert (loaded.key_id, loaded.algorithm) == (key.key_id, key.algorithm)


def test_an_encrypted_signing_key_takes_its_passphrase_from_the_environment(
    tmp_path: Path,
) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(
        ED25519.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    key = load_signing_key(path, environ={PASSPHRASE_ENV_VAR: "correct horse"})
    assert key.key_id == ED25519.key_id

    with pytest.raises(ConfigError) as missing:
        load_signing_key(path, environ={})
    assert str(missing.value) == (
        f"signing key {path} is encrypted: put its passphrase in ${PASSPHRASE_ENV_VAR}"
    )
    with pytest.raises(ConfigError) as wrong:
        load_signing_key(path, environ={PASSPHRASE_ENV_VAR: "battery staple"})
    assert str(wrong.value) == f"signing key {path} cannot be decrypted with ${PASSPHRASE_ENV_VAR}"
    assert "battery" not in str(wrong.value)


def _pem_private(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_public(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P384_KEY = ec.generate_private_key(ec.SECP384R1())

KEY_FILE_REFUSALS = [
    ("rsa_private", lambda: _pem_private(RSA_KEY), load_signing_key, "signing key {path} is "
     "an RSA key; bundle keys must be Ed25519 or EC P-256"),
    ("p384_private", lambda: _pem_private(P384_KEY), load_signing_key, "signing key {path} is "
     "an EC secp384r1 key; bundle keys must be Ed25519 or EC P-256"),
    ("rsa_public", lambda: _pem_public(RSA_KEY), load_verification_key, "verification key "
     "{path} is an RSA key; bundle keys must be Ed25519 or EC P-256"),
    ("p384_public", lambda: _pem_public(P384_KEY), load_verification_key, "verification key "
     "{path} is an EC secp384r1 key; bundle keys must be Ed25519 or EC P-256"),
    ("public_as_private", lambda: ED25519.verification_key.public_pem(), load_signing_key,
     "signing key {path} is not a PEM private key (PKCS8)"),
    ("private_as_public", ED25519.private_pem, load_verification_key, "verification key "
     "{path} holds a private key; give the gateway the public key (.pub)"),
    ("garbage_private", lambda: b"hello", load_signing_key,
     "signing key {path} is not a PEM private key (PKCS8)"),
    ("garbage_public", lambda: b"hello", load_verification_key,
     "verification key {path} is not a PEM public key (SubjectPublicKeyInfo)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "load", "message"),
    [case[1:] for case in KEY_FILE_REFUSALS],
    ids=[case[0] for case in KEY_FILE_REFUSALS],
)
def test_key_files_of_the_wrong_kind_are_refused(
    tmp_path: Path,
    content: Callable[[], bytes],
    load: Callable[[Path], object],
    message: str,
) -> None:
    path = tmp_path / "key.pem"
    data = content()
    path.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == message.format(path=path)
    for line in data.decode().splitlines()[1:-1]:
        assert line not in str(caught.value)


def test_a_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_verification_key(tmp_path / "absent.pub")
    assert str(caught.value) == (
        f"verification key {tmp_path / 'absent.pub'} cannot be read (no such file or directory)"
    )


def test_a_signing_key_repr_shows_no_key() -> None:
    shown = repr(ED25519)
    assert shown == f"BundleSigningKey(algorithm='EdDSA', key_id='{ED25519.key_id}')"


def test_unloaded_snapshot_signs_only_what_it_holds() -> None:
    files = BundleFiles(entry="bundle.yaml", origin="memory", files={"bundle.yaml": b"x: 1\n"})
    signature = sign_bundle(files, ED25519, revision="r1", now=NOW)
    payload = json.loads(
        PyJWS().decode(signature.strip(), ED25519.verification_key.public_key, ["EdDSA"])
    )
    assert payload == {
        "entry": "bundle.yaml",
        "files": {"bundle.yaml": hashlib.sha256(b"x: 1\n").hexdigest()},
        "format": MANIFEST_FORMAT,
        "revision": "r1",
        "signed_at": "2025-06-01T12:00:00Z",
    }


def test_rotation_a_bundle_loads_with_any_of_the_keys_its_signature_names(
    tmp_path: Path,
) -> None:
    old, new = ED25519.verification_key, OTHER_ED25519.verification_key
    path = _signed_directory(tmp_path, ED25519)
    # Signed by the old key: both keys configured, in either order.
    for keys in ([old, new], [new, old]):
        assert load_signed_bundle(read_bundle(path), keys, environ={}).revision == "test-1"
    # Re-signed by the new key: loads with both, then with the new one alone (old retired).
    sign_on_disk(path, OTHER_ED25519)
    assert load_signed_bundle(read_bundle(path), [old, new], environ={}).revision == "test-1"
    assert load_signed_bundle(read_bundle(path), [new], environ={}).revision == "test-1"
    # The old key alone (a gateway not yet told of the new one) refuses it.
    with pytest.raises(BundleError) as caught:
        load_signed_bundle(read_bundle(path), [old], environ={})
    assert [problem.message for problem in caught.value.problems] == [
        f"the bundle was signed by key '{OTHER_ED25519.key_id}', not by the verification key "
        f"'{ED25519.key_id}'"
    ]


def test_rotation_across_algorithms(tmp_path: Path) -> None:
    path = _signed_directory(tmp_path, ES256)
    keys = [ED25519.verification_key, ES256.verification_key]
    assert load_signed_bundle(read_bundle(path), keys, environ={}).revision == "test-1"
    with pytest.raises(BundleError) as caught:
        load_signed_bundle(read_bundle(path), [ED25519.verification_key], environ={})
    assert [problem.message for problem in caught.value.problems] == [
        "the signature uses algorithm 'ES256', but the verification key accepts only 'EdDSA'"
    ]


def test_rotation_between_keys_of_one_algorithm_is_refused_by_key_id(tmp_path: Path) -> None:
    path = _signed_directory(tmp_path, OTHER_ED25519)
    files = read_bundle(path)
    assert verify_bundle(files, [ED25519.verification_key, OTHER_ED25519.verification_key])
    assert signed_key_id(files) == OTHER_ED25519.key_id

    with pytest.raises(BundleError) as caught:
        verify_bundle(read_bundle(path), [ED25519.verification_key, ES256.verification_key])
    assert [problem.message for problem in caught.value.problems] == [
        f"the bundle was signed by key '{OTHER_ED25519.key_id}', not by any of the verification "
        f"keys '{ED25519.key_id}', '{ES256.key_id}'"
    ]


def test_a_signature_naming_one_key_is_checked_with_that_key_only(tmp_path: Path) -> None:
    # Signed by the other key but claiming this key's id: the named key checks it, and fails.
    path = _signed_directory(tmp_path)
    signature = path / "bundle.yaml.sig"
    payload = signed_payload(path / "bundle.yaml")
    signature.write_bytes(jws(payload, OTHER_ED25519, kid=ED25519.key_id))
    with pytest.raises(BundleError) as caught:
        verify_bundle(read_bundle(path), [OTHER_ED25519.verification_key, ED25519.verification_key])
    assert [problem.message for problem in caught.value.problems] == [
        f"the signature is not valid for key '{ED25519.key_id}'"
    ]


def test_a_key_id_with_the_wrong_algorithm_for_its_key_is_refused(tmp_path: Path) -> None:
    path = _signed_directory(tmp_path)
    signature = path / "bundle.yaml.sig"
    signature.write_bytes(jws(signed_payload(path / "bundle.yaml"), ED25519, kid=ES256.key_id))
    with pytest.raises(BundleError) as caught:
        verify_bundle(read_bundle(path), [ED25519.verification_key, ES256.verification_key])
    assert [problem.message for problem in caught.value.problems] == [
        f"the signature uses algorithm 'EdDSA', but key '{ES256.key_id}' accepts only 'ES256'"
    ]


def test_verification_keys_are_one_per_key_id_and_never_none() -> None:
    keys = verification_keys(
        [ED25519.verification_key, ES256.verification_key, ED25519.verification_key]
    )
    assert [key.key_id for key in keys] == [ED25519.key_id, ES256.key_id]
    with pytest.raises(ConfigError, match="no verification key given"):
        verification_keys([])
