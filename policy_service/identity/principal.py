"""Who is calling: the result of a successful identity check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class CredentialKind(StrEnum):
    JWT = "jwt"
    API_KEY = "api_key"


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    issuer: str  # the bundle's issuer *name* for JWTs; "api-key" for API keys
    client_id: str | None  # azp / client_id claim, or the API key's id
    scopes: frozenset[str]
    credential: CredentialKind
    expires_at: float | None = None  # epoch seconds
    claims: Mapping[str, Any] = field(default_factory=dict)  # verified claims only
    # What later phases derive from this principal alone (its identity headers, its bucket
    # ids), kept for as long as the principal is: a verified token's cache entry holds it,
    # so a caller's next check finds them made. Bounded by whoever fills it.
    derived: dict[object, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class IdentityFailure:
    """A credential was presented but is not acceptable.

    ``reason`` is a short code (``token_expired``, ``bad_signature``, ``wrong_audience``,
    ``unknown_issuer``, ``unknown_kid``, ``alg_not_allowed``, ``malformed_token``,
    ``token_too_large``, ``not_yet_valid``, ``keys_unavailable``, ``unknown_api_key``...).
    It is safe to show to the client and to use as a metric label: it never contains the
    token, a claim value or key material.
    """

    reason: str
    description: str = ""


IdentityResult = Principal | IdentityFailure
