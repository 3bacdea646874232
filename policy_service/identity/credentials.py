"""Find the one credential a request carries, or say why it is ambiguous.

RFC 6750 and MCP both require the token in the Authorization header only. Anything that
could let two components disagree about who is calling (two Authorization headers, a
token and an API key together, a token in the query string) is refused rather than
resolved by picking one.

Parsing is as strict as the grammars: only SP and HTAB count as whitespace, a bearer token
is an RFC 6750 b64token, an API key is visible ASCII, and a query is split on ";" as well as
"&". Whatever a looser reader (Python's str.strip(), a servlet container) could read
differently from us is refused instead.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote

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

# HTTP's optional whitespace is SP and HTAB only (RFC 9110 section 5.6.3). str.strip() would
# also drop NBSP, U+2028 and other Unicode spaces, which Envoy and the upstream keep.
_OWS = " \t"
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# An API key is opaque, so the only rule is one no two readers can disagree on: visible ASCII
# (%x21-7E) and no comma. Bytes outside ASCII are decoded with replacement before they reach
# us, so two different keys could hash alike; a comma is how Envoy joins repeated headers.
_API_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]+")

# RFC 6750 section 2.3 names access_token; the others are the usual API-key spellings. Names
# are compared folded (see _fold_name), so these are written folded too.
_URL_CREDENTIAL_NAMES = frozenset({"accesstoken", "apikey"})
# Query fields are split on ";" as well as "&": HTML 4 recommended ";", Python's urllib split
# on it by default until 3.9.2 (CVE-2021-23336), and older stacks upstream still do.
_QUERY_SEPARATORS = re.compile("[&;]")
# Each round of percent-decoding shrinks a name, so a cap keeps a crafted "%25252525..."
# linear; three rounds covers any server that decodes twice, with one to spare.
_MAX_DECODE_ROUNDS = 3


def extract_credential(request: HttpRequest, api_key_header: str) -> ExtractedCredential:
    if request.query and _query_has_credential(request.query, api_key_header):
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
        return _bearer(authorization)
    if api_key is not None:
        key = api_key.strip(_OWS)
        if _API_KEY.fullmatch(key) is None:
            return AmbiguousCredential(
                "malformed_api_key_header", "the API key header is malformed"
            )
        return Credential(CredentialType.API_KEY, key)
    return None


def _bearer(authorization: str) -> Credential | AmbiguousCredential | UnusableCredential:
    # RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token, the scheme in any case.
    scheme, _, token = authorization.strip(_OWS).partition(" ")
    if not scheme.isascii() or scheme.lower() != "bearer":
        return UnusableCredential(
            "unsupported_auth_scheme", "the Authorization header must use the Bearer scheme"
        )
    token = token.lstrip(" ")
    if "," in token:
        # Envoy joins repeated Authorization headers with a comma (it is an inline header,
        # so even encode_raw_headers passes them as one); a token never has a comma.
        return AmbiguousCredential(
            "multiple_authorization_headers", "send exactly one Authorization header"
        )
    if _B64TOKEN.fullmatch(token) is None:
        return AmbiguousCredential(
            "malformed_authorization_header",
            "the Authorization header must be 'Bearer <token>'",
        )
    return Credential(CredentialType.BEARER, token)


def _query_has_credential(query: str, api_key_header: str) -> bool:
    names = set(_URL_CREDENTIAL_NAMES)
    # The API key header's own name (x-api-key) is refused in the query too: it is the one
    # name certain to mean a credential to whoever configured this gateway.
    if header_name := _fold_name(api_key_header):
        names.add(header_name)
    return any(
        _fold_name(field.partition("=")[0]) in names for field in _QUERY_SEPARATORS.split(query)
    )


def _fold_name(name: str) -> str:
    """A field name as loosely as any upstream might read it: percent-decoded (``%5F`` is
    ``_``), NFKC-normalized, case-folded, and only its ASCII letters and digits kept, so
    that ``Access-Token``, ``access.token`` and ``access_token[]`` (which PHP turns into
    ``access_token``) all fold to ``accesstoken``. Folding too much only costs a 400 for
    an odd field name; folding too little lets a token through to the upstream."""
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(name)
        if decoded == name:
            break
        name = decoded
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(char for char in folded if char.isascii() and char.isalnum())
