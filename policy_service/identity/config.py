"""Compiled identity settings, built from a bundle at load time (never per request)."""

from __future__ import annotations

from dataclasses import dataclass

# Asymmetric algorithms a bundle may allow. HS256 is allowed only for an issuer that has a
# shared secret configured: a public key must never be usable as an HMAC secret.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
SYMMETRIC_ALGORITHMS = frozenset({"HS256"})


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    name: str  # the bundle's name for this issuer (used in logs and Principal.issuer)
    issuer: str  # the exact `iss` value expected
    algorithms: tuple[str, ...]  # allow-list; a token whose `alg` is not here is refused
    jwks_url: str | None = None
    jwks_file: str | None = None  # the bundle's name for the file, for messages
    jwks_document: bytes | None = None  # that file's content, read (and checked) at load
    hs256_secret: bytes | None = None  # only set when the bundle names a secret
    audiences: tuple[str, ...] = ()  # accepted in addition to the upstream's canonical URI
    leeway_seconds: float = 30.0
    jwks_cache_seconds: float = 300.0  # how long fetched keys are fresh
    jwks_min_refresh_seconds: float = 30.0  # unknown-kid refetches are at most this often
    max_token_bytes: int = 8192


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    id: str  # public name of the key (becomes Principal.client_id)
    sha256: str  # lower-case hex SHA-256 of the key; the key itself is never stored
    subject: str
    scopes: frozenset[str]
