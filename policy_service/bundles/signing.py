"""Signed bundles: a manifest of file hashes, signed as a JWS, checked before compiling.

A signature file (``<entry>.sig``) holds one JWS compact serialization. Its payload is the
manifest, canonical JSON::

    {"entry": "bundle.yaml", "files": {"bundle.yaml": "<sha256 hex>", "jwks.json": "..."},
     "format": "policy-service.bundle-manifest.v1", "revision": "2025-06-01",
     "signed_at": "2025-06-01T12:00:00Z"}

and its protected header is exactly ``alg``, ``kid`` and ``typ: policy-bundle+jws``. Keys are
Ed25519 (``EdDSA``) or EC P-256 (``ES256``); the ``kid`` is derived from the public key, so
"signed by another key" can be told apart from "tampered with".

The verifier trusts nothing in the signature file until the signature checks out: the
algorithm comes from the configured key, never from the header (an ``HS256`` JWS "signed"
with the public key as its secret, or an ``alg: none`` one, is refused before any crypto).
A verified snapshot is sealed to exactly the manifest's files, so the compile that follows
cannot read a byte that was not signed.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidSignatureError, PyJWTError

from policy_service.bundles.files import SIGNATURE_SUFFIX, BundleFileError, BundleFiles
from policy_service.bundles.loader import load_bundle_files
from policy_service.errors import BundleError, BundleProblem, ConfigError
from policy_service.policy.model import CompiledBundle

__all__ = [
    "KEY_ALGORITHMS",
    "MANIFEST_FORMAT",
    "PASSPHRASE_ENV_VAR",
    "SIGNATURE_TYPE",
    "BundleSigningKey",
    "BundleVerificationKey",
    "Manifest",
    "generate_signing_key",
    "load_signed_bundle",
    "load_signing_key",
    "load_verification_key",
    "sign_bundle",
    "signature_name",
    "verify_bundle",
]

MANIFEST_FORMAT = "policy-service.bundle-manifest.v1"
SIGNATURE_TYPE = "policy-bundle+jws"
PASSPHRASE_ENV_VAR = "POLICY_SERVICE_SIGNING_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
# keygen's names for the two key types, and the one JWS algorithm each may sign with.
KEY_ALGORITHMS = {"ed25519": "EdDSA", "es256": "ES256"}
_HEADER_KEYS = {"alg", "kid", "typ"}
_MANIFEST_KEYS = {"format", "revision", "entry", "files", "signed_at"}
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A key file is a few hundred bytes; the cap only stops a wrong path (a log, /dev/zero).
_MAX_KEY_FILE_BYTES = 64 * 1024

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


def _key_id(public_key: PublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _algorithm_for(key: object, what: str, path: str) -> str:
    """The one JWS algorithm a key may use, or a ``ConfigError`` naming its type (only)."""
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ES256"
        kind = f"an EC {key.curve.name} key"
    elif isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        kind = "an RSA key"
    else:
        kind = "a key of another type"
    raise ConfigError(f"{what} {path} is {kind}; bundle keys must be Ed25519 or EC P-256")


@dataclass(frozen=True)
class BundleVerificationKey:
    """The public key a gateway checks bundle signatures with."""

    public_key: PublicKey
    algorithm: str  # the only JWS alg a signature may use with this key
    key_id: str

    @classmethod
    def from_public_key(cls, public_key: PublicKey, source: str = "key") -> BundleVerificationKey:
        algorithm = _algorithm_for(public_key, "verification key", source)
        return cls(public_key, algorithm, _key_id(public_key))

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class BundleSigningKey:
    """A private key that signs bundles. Its repr names the key id, never the key."""

    private_key: PrivateKey
    algorithm: str
    key_id: str

    @classmethod
    def from_private_key(cls, private_key: PrivateKey, source: str = "key") -> BundleSigningKey:
        algorithm = _algorithm_for(private_key, "signing key", source)
        return cls(private_key, algorithm, _key_id(private_key.public_key()))

    @property
    def verification_key(self) -> BundleVerificationKey:
        return BundleVerificationKey.from_public_key(self.private_key.public_key())

    def private_pem(self) -> bytes:
        """Unencrypted PKCS8: keygen writes it mode 0600; encrypt it with openssl if needed."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"BundleSigningKey(algorithm={self.algorithm!r}, key_id={self.key_id!r})"


def generate_signing_key(kind: str = "ed25519") -> BundleSigningKey:
    private_key: PrivateKey
    if kind == "ed25519":
        private_key = Ed25519PrivateKey.generate()
    elif kind == "es256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ConfigError(f"unknown key algorithm '{kind}': use one of {', '.join(KEY_ALGORITHMS)}")
    return BundleSigningKey.from_private_key(private_key)


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        reason = (exc.strerror or "cannot be read").lower()
        raise ConfigError(f"{what} {path} cannot be read ({reason})") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{what} {path} is too large to be a PEM key")
    return data


def load_signing_key(
    path: str | Path, *, environ: Mapping[str, str] | None = None
) -> BundleSigningKey:
    """A PEM private key (PKCS8; an encrypted one takes its passphrase from the environment,
    so it never appears in the process list or shell history)."""
    environ = os.environ if environ is None else environ
    data = _read_key_file(Path(path), "signing key")
    # Messages below never quote the library's error: it could echo part of the input.
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        passphrase = environ.get(PASSPHRASE_ENV_VAR)
        if not passphrase:
            raise ConfigError(
                f"signing key {path} is encrypted: put its passphrase in ${PASSPHRASE_ENV_VAR}"
            ) from None
        try:
            private_key = serialization.load_pem_private_key(data, password=passphrase.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(
                f"signing key {path} cannot be decrypted with ${PASSPHRASE_ENV_VAR}"
            ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"signing key {path} is not a PEM private key (PKCS8)") from None
    if not isinstance(private_key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        _algorithm_for(private_key, "signing key", str(path))  # raises, naming the type
        raise AssertionError("unreachable")
    return BundleSigningKey.from_private_key(private_key, str(path))


def load_verification_key(path: str | Path) -> BundleVerificationKey:
    """A SubjectPublicKeyInfo PEM public key (what ``keygen`` writes as ``.pub``)."""
    data = _read_key_file(Path(path), "verification key")
    if b"PRIVATE KEY-----" in data:
        # Said plainly, because a private key on a gateway is a leak worth noticing.
        raise ConfigError(
            f"verification key {path} holds a private key; give the gateway the public key (.pub)"
        )
    try:
        public_key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"verification key {path} is not a PEM public key (SubjectPublicKeyInfo)"
        ) from None
    if not isinstance(public_key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        _algorithm_for(public_key, "verification key", str(path))  # raises, naming the type
        raise AssertionError("unreachable")
    return BundleVerificationKey.from_public_key(public_key, str(path))


@dataclass(frozen=True)
class Manifest:
    """What a signature covers: every file of the bundle by SHA-256, and its revision."""

    revision: str
    entry: str
    files: Mapping[str, str]  # bundle-relative name -> lower-case hex SHA-256
    signed_at: str  # RFC 3339, UTC
    format: str = MANIFEST_FORMAT

    def to_bytes(self) -> bytes:
        document = {
            "format": self.format,
            "revision": self.revision,
            "entry": self.entry,
            "files": dict(self.files),
            "signed_at": self.signed_at,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


class _ManifestInvalid(Exception):
    """The signed payload is not a manifest; the message says what is wrong."""


def _parse_manifest(payload: bytes) -> Manifest:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise _ManifestInvalid("it is not JSON") from None
    if not isinstance(document, dict):
        raise _ManifestInvalid("it must be a JSON object")
    if "format" in document and document["format"] != MANIFEST_FORMAT:
        # Checked first, so a manifest of a later format is reported as that, not as noise.
        raise _ManifestInvalid(
            f"its format is {_quoted(document['format'])}, expected '{MANIFEST_FORMAT}'"
        )
    if set(document) != _MANIFEST_KEYS:
        raise _ManifestInvalid(f"it must hold exactly {', '.join(sorted(_MANIFEST_KEYS))}")
    for key in ("revision", "entry", "signed_at"):
        if not isinstance(document[key], str) or not document[key]:
            raise _ManifestInvalid(f"'{key}' must be a non-empty string")
    try:
        signed_at = datetime.fromisoformat(document["signed_at"])
    except ValueError:
        signed_at = None
    if signed_at is None or signed_at.utcoffset() is None:
        raise _ManifestInvalid("'signed_at' must be an RFC 3339 time with a time zone")
    files = document["files"]
    if not isinstance(files, dict) or not files:
        raise _ManifestInvalid("'files' must map file names to SHA-256 digests")
    for name, digest in files.items():
        if not _is_plain_name(name):
            raise _ManifestInvalid(f"file name {_quoted(name)} is not a plain relative name")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise _ManifestInvalid(f"the digest of {_quoted(name)} is not a lower-case hex SHA-256")
    if document["entry"] not in files:
        raise _ManifestInvalid(f"its entry {_quoted(document['entry'])} is not among its files")
    return Manifest(
        revision=document["revision"],
        entry=document["entry"],
        files=dict(files),
        signed_at=document["signed_at"],
        format=document["format"],
    )


def _is_plain_name(name: str) -> bool:
    """Normalized, relative, inside the bundle: what ``BundleFiles.resolve`` would produce."""
    parts = PurePosixPath(name).parts
    return (
        bool(name)
        and not name.startswith("/")
        and "\\" not in name
        and "\x00" not in name
        and "/".join(parts) == name
        and all(part not in (".", "..") for part in parts)
    )


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _rfc3339(moment: datetime) -> str:
    if moment.utcoffset() is None:
        raise ValueError("signing time must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signature_name(files: BundleFiles) -> str:
    """The file name the signature of ``files`` lives under, beside its entry."""
    return PurePosixPath(files.entry).name + SIGNATURE_SUFFIX


def sign_bundle(
    files: BundleFiles,
    key: BundleSigningKey,
    *,
    revision: str,
    now: datetime | None = None,
) -> bytes:
    """The signature file for ``files``: a JWS over a manifest of every file in the snapshot.

    Load the bundle first (``load_bundle_files``): that is what reads the JWKS files a
    single-file bundle names into the snapshot, and so into the manifest.
    """
    manifest = Manifest(
        revision=revision,
        entry=files.entry,
        files={name: _sha256(files.files[name]) for name in sorted(files.files)},
        signed_at=_rfc3339(now if now is not None else datetime.now(UTC)),
    )
    token = PyJWS().encode(
        manifest.to_bytes(),
        key.private_key,
        algorithm=key.algorithm,
        headers={"kid": key.key_id, "typ": SIGNATURE_TYPE},
    )
    return token.encode("ascii") + b"\n"


def verify_bundle(files: BundleFiles, key: BundleVerificationKey) -> Manifest:
    """Check ``files`` against its signature and seal it to exactly the signed files.

    Raises ``BundleError`` with one problem saying precisely what failed.
    """

    def refuse(message: str) -> BundleError:
        return BundleError([BundleProblem(files.source, "", message)])

    if files.signature is None:
        raise refuse(
            "is not signed, but a verification key is configured: expected the signature "
            f"file '{signature_name(files)}'"
        )
    token = files.signature.strip()
    try:
        header = PyJWS().get_unverified_header(token)
    except PyJWTError:
        raise refuse(
            f"the signature file '{signature_name(files)}' is not a JWS compact serialization"
        ) from None
    if header.get("alg") != key.algorithm:
        raise refuse(
            f"the signature uses algorithm {_quoted(header.get('alg'))}, but the verification "
            f"key accepts only '{key.algorithm}'"
        )
    if set(header) != _HEADER_KEYS or header.get("typ") != SIGNATURE_TYPE:
        raise refuse(
            "the signature is not a policy bundle signature: its header must hold exactly "
            f"alg, kid and typ '{SIGNATURE_TYPE}'"
        )
    if header["kid"] != key.key_id:
        raise refuse(
            f"the bundle was signed by key {_quoted(header['kid'])}, not by the verification "
            f"key '{key.key_id}'"
        )
    try:
        # The allow-list is the configured key's one algorithm, so the header cannot choose.
        verified = PyJWS(algorithms=[key.algorithm]).decode_complete(
            token, key.public_key, algorithms=[key.algorithm]
        )
    except InvalidSignatureError:
        raise refuse(f"the signature is not valid for key '{key.key_id}'") from None
    except (PyJWTError, binascii.Error):
        raise refuse(
            f"the signature file '{signature_name(files)}' is not a JWS compact serialization"
        ) from None
    payload: Any = verified["payload"]
    try:
        manifest = _parse_manifest(payload)
    except _ManifestInvalid as exc:
        raise refuse(f"the signed manifest is not valid: {exc}") from None
    if manifest.entry != files.entry:
        raise refuse(
            f"the signed manifest is for entry {_quoted(manifest.entry)}, but the bundle's entry "
            f"is '{files.entry}'"
        )

    signed: dict[str, bytes] = {}
    for name, digest in sorted(manifest.files.items()):
        if name not in files.files and (
            files.sealed or files.root is None or not (files.root / name).is_file()
        ):
            raise refuse(f"file {_quoted(name)} is signed but missing from the bundle")
        try:
            content = files.read(name)
        except BundleFileError as exc:
            raise refuse(f"file {_quoted(name)} is signed but {exc.message}") from None
        if _sha256(content) != digest:
            raise refuse(f"file {_quoted(name)} has changed since it was signed")
        signed[name] = content
    # A directory or archive snapshot holds everything it shipped with; a single file holds
    # what has been read so far. Either way nothing in it may be unsigned.
    for name in sorted(files.files):
        if name not in manifest.files:
            raise refuse(f"file {_quoted(name)} is in the bundle but not in the signed manifest")
    files.seal(signed)
    return manifest


def load_signed_bundle(
    files: BundleFiles,
    key: BundleVerificationKey | None,
    *,
    environ: Mapping[str, str] | None = None,
) -> CompiledBundle:
    """The one way the server and the reloader turn a snapshot into a bundle.

    With a key: verify, then compile the sealed snapshot, then check the signed revision is
    the bundle's own. Without a key a signature file is not looked at at all: an unchecked
    signature proves nothing, and checking it against nothing would only suggest it did.
    """
    if key is None:
        return load_bundle_files(files, environ=environ)
    manifest = verify_bundle(files, key)
    bundle = load_bundle_files(files, environ=environ)
    if manifest.revision != bundle.revision:
        # The hashes already match, so this is a signer's mistake, not tampering; but a
        # revision is what operators roll back by, so it must be the one that was signed.
        raise BundleError(
            [
                BundleProblem(
                    files.source,
                    "",
                    f"the signed manifest is for revision {_quoted(manifest.revision)}, but the "
                    f"bundle's revision is '{bundle.revision}'",
                )
            ]
        )
    return bundle


def _quoted(value: object) -> str:
    """An untrusted header or manifest value, short and printable, for a message."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = "".join(character if character.isprintable() else "?" for character in text)
    if len(text) > 120:
        text = text[:117] + "..."
    return f"'{text}'"
