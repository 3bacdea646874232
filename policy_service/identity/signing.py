"""Token minting for the dev stack, the ``policy-service token`` command and tests.

A ``SigningKey`` is a private key plus its JWS algorithm and ``kid``. It publishes the public
half as a JWK/JWKS (never a private member) and mints compact JWTs whose header names the
``kid``. The default ``kid`` is the RFC 7638 thumbprint, so it is stable across a PEM round
trip. This is not the service's verification path; that is ``identity.jwt``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["SIGNING_ALGORITHMS", "PrivateKey", "SigningKey"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | Ed25519PrivateKey
SIGNING_ALGORITHMS = ("ES256", "RS256", "PS256", "EdDSA")
_RSA_BITS = 2048


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(length, "big"))


def _check_key(private_key: object, alg: str) -> PrivateKey:
    """The key must be of the type ``alg`` needs; a mismatch is a programming error."""
    if alg in ("RS256", "PS256"):
        if isinstance(private_key, rsa.RSAPrivateKey):
            return private_key
    elif alg == "ES256":
        if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
            private_key.curve, ec.SECP256R1
        ):
            return private_key
    elif alg == "EdDSA":
        if isinstance(private_key, Ed25519PrivateKey):
            return private_key
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r}; use one of {SIGNING_ALGORITHMS}")
    raise ValueError(f"the private key is not of the type {alg} needs")


class SigningKey:
    """A private signing key with its algorithm and key id."""

    def __init__(self, private_key: PrivateKey, alg: str, kid: str | None = None) -> None:
        self._private_key = _check_key(private_key, alg)
        self.alg = alg
        self.kid = kid if kid is not None else self.thumbprint()

    @classmethod
    def generate(cls, alg: str = "ES256", kid: str | None = None) -> SigningKey:
        private_key: PrivateKey
        if alg in ("RS256", "PS256"):
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
        elif alg == "ES256":
            private_key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            private_key = Ed25519PrivateKey.generate()
        else:
            raise ValueError(
                f"unsupported signing algorithm {alg!r}; use one of {SIGNING_ALGORITHMS}"
            )
        return cls(private_key, alg, kid)

    @classmethod
    def from_pem(cls, pem: str | bytes, alg: str, kid: str | None = None) -> SigningKey:
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        try:
            private_key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            # The library's message could echo part of the input; keep key material out.
            raise ValueError("not an unencrypted PEM private key") from None
        return cls(_check_key(private_key, alg), alg, kid)

    def to_pem(self) -> str:
        """The private key as unencrypted PKCS#8 PEM (dev use: store it with care)."""
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def _public_members(self) -> dict[str, str]:
        """The JWK members that identify the public key (RFC 7638 required members)."""
        public = self._private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            return {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}
        if isinstance(public, ec.EllipticCurvePublicKey):
            point = public.public_numbers()
            return {"crv": "P-256", "kty": "EC", "x": _uint(point.x, 32), "y": _uint(point.y, 32)}
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}

    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint (SHA-256): a stable, content-derived key id."""
        canonical = json.dumps(self._public_members(), separators=(",", ":"), sort_keys=True)
        return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def public_jwk(self) -> dict[str, str]:
        return {**self._public_members(), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.public_jwk()]}

    def mint(
        self,
        claims: Mapping[str, Any],
        *,
        lifetime_seconds: float = 3600,
        now: float | None = None,
    ) -> str:
        """A signed compact JWT. ``iat`` and ``exp`` are set unless ``claims`` has them."""
        issued_at = int(time.time() if now is None else now)
        payload = dict(claims)
        payload.setdefault("iat", issued_at)
        payload.setdefault("exp", issued_at + int(lifetime_seconds))
        return jwt.encode(
            payload,
            self._private_key,
            algorithm=self.alg,
            headers={"kid": self.kid, "typ": "JWT"},
        )
