"""API-key verification: a presented key is hashed and looked up, never compared in clear.

Bundles store only the SHA-256 of each key, so a leaked bundle does not leak keys. Looking up
the hash in a dict is not a timing oracle worth worrying about: an attacker who measures it
learns about the *hash* of their own guess, which says nothing about any stored key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from policy_service.identity.config import ApiKeyEntry
from policy_service.identity.principal import CredentialKind, IdentityFailure, Principal

__all__ = ["API_KEY_ISSUER", "ApiKeyVerifier", "hash_api_key"]

API_KEY_ISSUER = "api-key"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

UNKNOWN_API_KEY = IdentityFailure("unknown_api_key", "The API key is not recognised.")


def hash_api_key(key: str) -> str:
    """Lower-case hex SHA-256 of ``key`` (UTF-8): the form bundles store."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyVerifier:
    """Maps presented API keys to principals through their hashes."""

    def __init__(self, entries: Sequence[ApiKeyEntry]) -> None:
        self._principals: dict[str, Principal] = {}
        for entry in entries:
            digest = entry.sha256.lower()
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError(f"API key {entry.id!r}: sha256 must be 64 hex digits")
            if digest in self._principals:
                raise ValueError(f"API key {entry.id!r}: the same key hash appears twice")
            # Principals are immutable, so one instance per key serves every request.
            self._principals[digest] = Principal(
                subject=entry.subject,
                issuer=API_KEY_ISSUER,
                client_id=entry.id,
                scopes=entry.scopes,
                credential=CredentialKind.API_KEY,
            )

    def verify(self, key: str) -> Principal | IdentityFailure:
        if not key:
            return UNKNOWN_API_KEY
        principal = self._principals.get(hash_api_key(key))
        return principal if principal is not None else UNKNOWN_API_KEY
