"""Find the one credential a request carries, or say why it is ambiguous.

RFC 6750 and MCP both require the token in the Authorization header only. Anything that
could let two components disagree about who is calling (two Authorization headers, a
token and an API key together, a token in the query string) is refused rather than
resolved by picking one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl

from policy_service.request.model import HttpRequest


class CredentialType(StrEnum):
    BEARER = "bearer"
    API_KEY = "api_key"


@dataclass(frozen=True, slots=True)
class Credential:
    type: CredentialType
    secret: str

    def __repr__(self) -> str:  # never let a secret reach a log through repr()
        return f"Credential(type={self.type!s}, secret=<redacted>)"


@dataclass(frozen=True, slots=True)
class AmbiguousCredential:
    reason: str  # multiple_authorization_headers | multiple_credentials | token_in_query | ...
    message: str


@dataclass(frozen=True, slots=True)
class UnusableCredential:
    """A credential is present but in a form we never accept (reported as invalid_token)."""

    reason: str
    message: str


ExtractedCredential = Credential | AmbiguousCredential | UnusableCredential | None

# RFC 6750 section 2.3 names access_token; the others are the usual API-key spellings.
_QUERY_TOKEN_NAMES = frozenset({"access_token", "api_key", "apikey"})


def extract_credential(request: HttpRequest, api_key_header: str) -> ExtractedCredential:
    if request.query and _query_has_token(request.query):
        return AmbiguousCredential(
            "token_in_query", "credentials must be sent in a header, never in the URL"
        )
    authorization = request.headers.get("authorization")
    api_key = request.headers.get(api_key_header)
    if "authorization" in request.repeated_headers:
        return AmbiguousCredential(
            "multiple_authorization_headers", "send exactly one Authorization header"
        )
    if api_key_header in request.repeated_headers:
        return AmbiguousCredential("multiple_api_keys", "send exactly one API key header")
    if authorization is not None and api_key is not None:
        return AmbiguousCredential(
            "multiple_credentials", "send either a bearer token or an API key, not both"
        )
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return UnusableCredential(
                "unsupported_auth_scheme", "the Authorization header must use the Bearer scheme"
            )
        token = token.strip()
        if "," in token:
            # Envoy joins repeated Authorization headers with a comma (it is an inline header,
            # so even encode_raw_headers passes them as one); a token never has a comma.
            return AmbiguousCredential(
                "multiple_authorization_headers", "send exactly one Authorization header"
            )
        if not token or " " in token:
            return AmbiguousCredential(
                "malformed_authorization_header",
                "the Authorization header must be 'Bearer <token>'",
            )
        return Credential(CredentialType.BEARER, token)
    if api_key is not None:
        key = api_key.strip()
        if not key or "," in key:
            return AmbiguousCredential(
                "malformed_api_key_header", "the API key header is malformed"
            )
        return Credential(CredentialType.API_KEY, key)
    return None


def _query_has_token(query: str) -> bool:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=256)
    except ValueError:
        return True  # an unparseable query with possibly a token in it is not worth the risk
    return any(name.lower() in _QUERY_TOKEN_NAMES for name, _ in pairs)
