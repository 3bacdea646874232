"""JWT bearer-token verification: from a compact JWS to a ``Principal``.

The checks run in an order chosen for safety: size before any parsing, then the header and
the *unverified* ``iss`` only to pick the issuer and its keys, then the signature, and only
then the claims. No claim is trusted before the signature is.

A verified token is cached (bounded LRU keyed by the token string) until its ``exp`` by the
injected clock, never longer, so the hot path for a token seen before is a dict lookup, a
clock read and the audience check. The audience check runs on every call because one token
may be presented to several upstreams. Failures are never cached: a token that failed on an
unknown ``kid`` may succeed once the issuer's rotated keys are fetched.

Failure descriptions are fixed sentences. They never contain the token, a claim value or
key material, so they are safe to return to clients and to log.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from policy_service.clock import SYSTEM_CLOCK, Clock
from policy_service.identity.audiences import canonical_audience
from policy_service.identity.config import ASYMMETRIC_ALGORITHMS, IssuerConfig
from policy_service.identity.jwks import (
    DEFAULT_FETCH_TIMEOUT_SECONDS,
    DEFAULT_WAIT_SECONDS,
    FileKeySource,
    JwksFetcher,
    KeySource,
    UrlKeySource,
    VerificationKey,
    b64url_decode,
)
from policy_service.identity.principal import CredentialKind, IdentityFailure, Principal
from policy_service.identity.scopes import scopes_of

__all__ = ["JwtVerifier", "canonical_audience"]

_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_DEFAULT_MAX_TOKEN_BYTES = 8192

TOKEN_TOO_LARGE = IdentityFailure(
    "token_too_large", "The bearer token is larger than this service accepts."
)
MALFORMED_TOKEN = IdentityFailure("malformed_token", "The bearer token is not a well-formed JWT.")
MALFORMED_HEADER = IdentityFailure("malformed_token", "The token's header is not valid.")
MALFORMED_CLAIMS = IdentityFailure("malformed_token", "The token's claims are not valid.")
UNSUPPORTED_CRIT = IdentityFailure(
    "malformed_token", "The token requires header extensions this service does not support."
)
UNKNOWN_ISSUER = IdentityFailure("unknown_issuer", "The token's issuer is not trusted here.")
ALG_NOT_ALLOWED = IdentityFailure(
    "alg_not_allowed", "The token's signing algorithm is not allowed for its issuer."
)
UNKNOWN_KID = IdentityFailure(
    "unknown_kid", "The token names a signing key its issuer does not publish."
)
BAD_SIGNATURE = IdentityFailure("bad_signature", "The token's signature is not valid.")
KEY_ALG_MISMATCH = IdentityFailure(
    "bad_signature", "The token's signing algorithm does not match its key."
)
KEYS_UNAVAILABLE = IdentityFailure(
    "keys_unavailable", "The issuer's signing keys are not available right now; retry later."
)
MISSING_EXP = IdentityFailure("missing_exp", "The token has no expiry time.")
TOKEN_EXPIRED = IdentityFailure("token_expired", "The token has expired.")
NOT_YET_VALID = IdentityFailure("not_yet_valid", "The token is not valid yet.")
ISSUED_IN_FUTURE = IdentityFailure("issued_in_future", "The token's issue time is in the future.")
MISSING_SUBJECT = IdentityFailure("missing_subject", "The token does not name a subject.")
WRONG_AUDIENCE = IdentityFailure(
    "wrong_audience", "The token was not issued for this resource (audience mismatch)."
)


_canonical_configured = functools.lru_cache(maxsize=1024)(canonical_audience)


def _timestamp(value: object) -> float | None:
    """A finite NumericDate, or None. NaN would make every comparison false (never
    expired) and a huge integer would overflow float arithmetic, so both are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


class _Verified:
    """A cache entry: everything about a token except the per-call audience check."""

    __slots__ = ("audiences", "expires_at", "for_any_audience", "principal")

    def __init__(
        self,
        principal: Principal,
        expires_at: float,
        audiences: frozenset[str],
        for_any_audience: bool,
    ) -> None:
        self.principal = principal
        self.expires_at = expires_at
        self.audiences = audiences  # canonical forms of the token's `aud`
        self.for_any_audience = for_any_audience  # `aud` matched the issuer's own audiences

    def check_audience(self, audiences: Sequence[str]) -> Principal | IdentityFailure:
        if self.for_any_audience:
            return self.principal
        mine = self.audiences
        for audience in audiences:
            if _canonical_configured(audience) in mine:
                return self.principal
        return WRONG_AUDIENCE


class _Issuer:
    __slots__ = ("algorithms", "audiences", "config", "sources")

    def __init__(self, config: IssuerConfig, sources: tuple[KeySource, ...]) -> None:
        self.config = config
        # `none` never verifies anything, whatever a bundle says.
        self.algorithms = frozenset(a for a in config.algorithms if a.lower() != "none")
        self.audiences = frozenset(canonical_audience(a) for a in config.audiences)
        self.sources = sources

    async def keys_for(self, kid: str | None) -> tuple[VerificationKey, ...] | None:
        if len(self.sources) == 1:
            return await self.sources[0].keys_for(kid)
        found: list[VerificationKey] = []
        loaded = False
        for source in self.sources:
            keys = await source.keys_for(kid)
            if keys is not None:
                loaded = True
                found.extend(keys)
        return tuple(found) if loaded else None


class _SharedUrlSource:
    """A JWKS URL source and how many verifiers use it.

    A reload builds a new verifier while the old one still serves checks. The new one takes
    over the old one's URL sources for issuers whose key settings did not change, so keys
    already fetched survive the reload (the identity provider may be down just then) and
    nothing is refetched; whichever verifier closes last closes the source.
    """

    __slots__ = ("source", "users")

    def __init__(self, source: UrlKeySource) -> None:
        self.source = source
        self.users = 1


# What makes a URL source reusable across bundles: the issuer and every key setting.
_UrlSettings = tuple[str, str, float, float]


class JwtVerifier:
    """Verifies bearer JWTs against a fixed set of trusted issuers.

    JWKS URLs are fetched in the background (``fetch_timeout_seconds`` each); a check that
    needs a fetch's answer waits for it at most ``fetch_wait_seconds``, well inside Envoy's
    ext_authz timeout, and is refused (``keys_unavailable`` or ``unknown_kid``) after that.

    ``previous`` (the verifier of the bundle this one replaces) lends its JWKS URL sources
    to issuers whose ``iss``, URL and cache settings are unchanged: see ``successor``.
    """

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        clock: Clock = SYSTEM_CLOCK,
        fetcher: JwksFetcher | None = None,
        cache_size: int = 10_000,
        fetch_timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS,
        fetch_wait_seconds: float = DEFAULT_WAIT_SECONDS,
        previous: JwtVerifier | None = None,
    ) -> None:
        seen: set[str] = set()
        for config in issuers:
            if config.issuer in seen:
                raise ValueError(f"issuer {config.name!r}: another issuer has the same `iss`")
            seen.add(config.issuer)
        self._clock = clock
        self._fetcher = fetcher
        self._fetch_timeout_seconds = fetch_timeout_seconds
        self._fetch_wait_seconds = fetch_wait_seconds
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._issuers: dict[str, _Issuer] = {}
        self._file_sources: list[FileKeySource] = []
        self._url_sources: dict[_UrlSettings, _SharedUrlSource] = {}
        self._adopted: set[_UrlSettings] = set()  # started by the previous verifier
        self._closed = False
        lent = previous._url_sources if previous is not None and not previous._closed else {}
        for config in issuers:
            sources: list[KeySource] = []
            if config.jwks_file is not None:
                file_source = FileKeySource(config.jwks_file, config.jwks_document)
                self._file_sources.append(file_source)
                sources.append(file_source)
            if config.jwks_url is not None:
                settings = (
                    config.issuer,
                    config.jwks_url,
                    config.jwks_cache_seconds,
                    config.jwks_min_refresh_seconds,
                )
                shared = lent.get(settings)
                if shared is not None:
                    shared.users += 1
                    self._adopted.add(settings)
                else:
                    shared = _SharedUrlSource(
                        UrlKeySource(
                            config.jwks_url,
                            cache_seconds=config.jwks_cache_seconds,
                            min_refresh_seconds=config.jwks_min_refresh_seconds,
                            fetcher=fetcher,
                            clock=clock,
                            timeout_seconds=fetch_timeout_seconds,
                            wait_seconds=fetch_wait_seconds,
                        )
                    )
                self._url_sources[settings] = shared
                sources.append(shared.source)
            self._issuers[config.issuer] = _Issuer(config, tuple(sources))
        self._max_token_bytes = max(
            (c.max_token_bytes for c in issuers), default=_DEFAULT_MAX_TOKEN_BYTES
        )

    def successor(self, issuers: Sequence[IssuerConfig]) -> JwtVerifier:
        """A verifier for a reloaded bundle: same clock, fetcher and limits, and this one's
        JWKS URL sources (with the keys they hold) for every issuer whose settings are
        unchanged. Close both; a shared source closes with the last of them."""
        return JwtVerifier(
            issuers,
            clock=self._clock,
            fetcher=self._fetcher,
            cache_size=self._cache_size,
            fetch_timeout_seconds=self._fetch_timeout_seconds,
            fetch_wait_seconds=self._fetch_wait_seconds,
            previous=self,
        )

    async def start(self) -> None:
        """Load key files (a bad file raises ``KeySourceError``) and prefetch JWKS URLs.

        A URL that cannot be fetched now is logged and retried on demand: the identity
        provider being briefly down must not stop the service from starting. Sources taken
        over from a previous verifier were started by it and are not fetched again.
        """
        for file_source in self._file_sources:
            await file_source.start()
        await asyncio.gather(
            *(
                shared.source.start()
                for settings, shared in self._url_sources.items()
                if settings not in self._adopted
            )
        )

    async def aclose(self) -> None:
        if self._closed:  # a second close must not release shared sources twice
            return
        self._closed = True
        for shared in self._url_sources.values():
            shared.users -= 1
            if shared.users == 0:
                await shared.source.aclose()
        self._cache.clear()

    async def wait_jwks_idle(self) -> None:
        """Wait for the JWKS fetches under way to finish (tests, benchmarks)."""
        for shared in self._url_sources.values():
            await shared.source.wait_idle()

    def jwks_refreshes(self) -> dict[str, tuple[int, int]]:
        """Issuer name -> (successful, failed) JWKS fetches, for issuers with a JWKS URL."""
        return {
            issuer.config.name: (source.refreshes_ok, source.refreshes_failed)
            for issuer in self._issuers.values()
            for source in issuer.sources
            if isinstance(source, UrlKeySource)
        }

    async def verify(self, token: str, audiences: Sequence[str]) -> Principal | IdentityFailure:
        """Check ``token`` and that it was issued for one of ``audiences``."""
        if isinstance(audiences, str):  # a lone URI is a Sequence[str] of its characters
            audiences = (audiences,)
        # len() of a str is O(1): refuse oversized input before hashing it for the cache.
        if len(token) > self._max_token_bytes:
            return TOKEN_TOO_LARGE
        entry = self._cache.get(token)
        if entry is not None:
            if self._clock.now() < entry.expires_at:
                self._cache.move_to_end(token)
                return entry.check_audience(audiences)
            self._cache.pop(token, None)
        result = await self._verify_token(token)
        if isinstance(result, IdentityFailure):
            return result
        self._remember(token, result)
        return result.check_audience(audiences)

    def _remember(self, token: str, entry: _Verified) -> None:
        # Only while exp is still ahead: a token accepted thanks to leeway is not cached.
        if self._cache_size <= 0 or self._clock.now() >= entry.expires_at:
            return
        self._cache[token] = entry
        self._cache.move_to_end(token)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _verify_token(self, token: str) -> _Verified | IdentityFailure:
        # isascii() makes len() equal the byte length and rules out look-alike characters.
        if not token.isascii() or _TOKEN.fullmatch(token) is None:
            return MALFORMED_TOKEN
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _decode_json(header_b64)
        if header is None:
            return MALFORMED_HEADER
        claims = _decode_json(payload_b64)
        if claims is None:
            return MALFORMED_CLAIMS

        # The unverified `iss` only selects which keys to try; it is trusted after the
        # signature has been checked with that issuer's keys.
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            return UNKNOWN_ISSUER
        config = issuer.config
        if len(token) > config.max_token_bytes:
            return TOKEN_TOO_LARGE

        alg = header.get("alg")
        if not isinstance(alg, str):
            return MALFORMED_HEADER
        if alg not in issuer.algorithms:
            return ALG_NOT_ALLOWED
        if "crit" in header:
            # RFC 7515 4.1.11: extensions listed in `crit` must be understood; we know none.
            return UNSUPPORTED_CRIT
        try:
            signature = b64url_decode(signature_b64)
        except ValueError:
            return MALFORMED_TOKEN
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")

        if alg == "HS256":
            # Only ever the issuer's configured secret: never a key from its JWKS, so a
            # public key can't be turned into an HMAC secret (algorithm confusion).
            secret = config.hs256_secret
            if secret is None:
                return ALG_NOT_ALLOWED
            expected = hmac.new(secret, signing_input, hashlib.sha256).digest()
            if not hmac.compare_digest(expected, signature):
                return BAD_SIGNATURE
        elif alg in ASYMMETRIC_ALGORITHMS:
            failure = await self._check_signature(issuer, header, alg, signing_input, signature)
            if failure is not None:
                return failure
        else:
            return ALG_NOT_ALLOWED

        return _check_claims(issuer, claims, self._clock.now())

    async def _check_signature(
        self,
        issuer: _Issuer,
        header: dict[str, Any],
        alg: str,
        signing_input: bytes,
        signature: bytes,
    ) -> IdentityFailure | None:
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return MALFORMED_HEADER
        keys = await issuer.keys_for(kid)
        if keys is None:
            return KEYS_UNAVAILABLE
        if not keys:
            return UNKNOWN_KID
        # A key verifies only the algorithms of its own type: an RSA key never checks an
        # ES256 or HS256 token even if the header asks for it.
        candidates = [key for key in keys if alg in key.algorithms]
        if not candidates:
            return KEY_ALG_MISMATCH
        for key in candidates:
            if key.verify(alg, signing_input, signature):
                return None
        return BAD_SIGNATURE


def _refuse_constant(name: str) -> Any:
    # json accepts NaN and Infinity by default; they are not JSON and not valid times.
    raise ValueError("non-standard JSON constant")


def _decode_json(segment: str) -> dict[str, Any] | None:
    try:
        # Strict UTF-8 (RFC 7519 section 7.2), decoded here: json.loads(bytes) would also take
        # UTF-16 and UTF-32, and UTF-8-encoded surrogates, which other parsers refuse.
        text = b64url_decode(segment).decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant)
        if "\\u" in text:
            # An escape can still spell a lone surrogate ("\ud800"), which is not text: other
            # parsers replace it, refuse it or keep it, and it has no UTF-8 form for a header.
            # Encoding the decoded value finds one wherever it is (UnicodeEncodeError).
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # bad base64, bad UTF-8, bad JSON, deep nesting
        return None
    return value if isinstance(value, dict) else None


def _check_claims(
    issuer: _Issuer, claims: dict[str, Any], now: float
) -> _Verified | IdentityFailure:
    config = issuer.config
    if claims.get("exp") is None:
        return MISSING_EXP
    exp = _timestamp(claims["exp"])
    if exp is None:
        return MALFORMED_CLAIMS
    if now >= exp + config.leeway_seconds:
        return TOKEN_EXPIRED
    if claims.get("nbf") is not None:
        nbf = _timestamp(claims["nbf"])
        if nbf is None:
            return MALFORMED_CLAIMS
        if now + config.leeway_seconds < nbf:
            return NOT_YET_VALID
    if claims.get("iat") is not None:
        iat = _timestamp(claims["iat"])
        if iat is None:
            return MALFORMED_CLAIMS
        # `iat` is optional (RFC 7519 4.1.6), but one beyond clock skew is false or comes
        # from a broken issuer clock, and it defeats whatever reasons from issue time: a
        # token stamped a year ahead is newer than any "revoke all issued before T" cutoff,
        # and its age is negative to any maximum-age check.
        if now + config.leeway_seconds < iat:
            return ISSUED_IN_FUTURE
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        return MISSING_SUBJECT

    aud = claims.get("aud")
    token_audiences: tuple[str, ...]
    if aud is None:
        token_audiences = ()
    elif isinstance(aud, str):
        token_audiences = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        token_audiences = tuple(aud)
    else:
        return MALFORMED_CLAIMS
    canonical = frozenset(canonical_audience(a) for a in token_audiences)

    scopes = scopes_of(claims)
    if scopes is None:
        return MALFORMED_CLAIMS
    client_id = claims.get("client_id")
    if not isinstance(client_id, str):
        azp = claims.get("azp")
        client_id = azp if isinstance(azp, str) else None

    principal = Principal(
        subject=subject,
        issuer=config.name,
        client_id=client_id,
        scopes=scopes,
        credential=CredentialKind.JWT,
        expires_at=exp,
        claims=MappingProxyType(claims),
    )
    return _Verified(
        principal,
        expires_at=exp,
        audiences=canonical,
        for_any_audience=not canonical.isdisjoint(issuer.audiences),
    )
