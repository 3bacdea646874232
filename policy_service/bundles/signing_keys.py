"""Bundle signing keys: Ed25519 or EC P-256 key pairs, read from PEM files, and key rings.

A key's id is derived from its public key (the first 16 hex digits of the SHA-256 of its
SubjectPublicKeyInfo DER), so "signed by another key" can be told apart from "tampered
with", and a gateway given several keys (while a signing key is rotated) checks a
signature with the one key its ``kid`` names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from policy_service.errors import ConfigError

__all__ = [
    "KEY_ALGORITHMS",
    "PASSPHRASE_ENV_VAR",
    "BundleSigningKey",
    "BundleVerificationKey",
    "generate_signing_key",
    "load_signing_key",
    "load_verification_key",
    "verification_keys",
]

PASSPHRASE_ENV_VAR = "POLICY_SERVICE_SIGNING_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
# keygen's names for the two key types, and the one JWS algorithm each may sign with.
KEY_ALGORITHMS = {"ed25519": "EdDSA", "es256": "ES256"}

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


def verification_keys(
    keys: BundleVerificationKey | Sequence[BundleVerificationKey],
) -> tuple[BundleVerificationKey, ...]:
    """The keys a signature may be made with, one per key id, in the order given.

    Several keys are how a signing key is rotated: the gateway trusts the old and the new
    key while bundles are re-signed, then the old one is dropped.
    """
    ring = (keys,) if isinstance(keys, BundleVerificationKey) else tuple(keys)
    if not ring:
        raise ConfigError("no verification key given")
    by_id: dict[str, BundleVerificationKey] = {}
    for key in ring:
        by_id.setdefault(key.key_id, key)  # the same key twice is still one key
    return tuple(by_id.values())
