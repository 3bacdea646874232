"""Verification keys: parsing JWKS documents and keeping them fresh.

Two sources feed the JWT verifier:

* ``FileKeySource`` reads a JWKS file once at start. A bad file is an operator mistake and
  raises ``KeySourceError`` so the service refuses to start with it.
* ``UrlKeySource`` fetches a JWKS over HTTP(S). Keys are refreshed in the background every
  ``jwks_cache_seconds`` while checks go on verifying with the keys held; an unknown ``kid``
  triggers a refetch at most once per ``jwks_min_refresh_seconds`` (so a stream of garbage
  kids cannot make us hammer the identity provider); when the provider is down or hangs we
  keep serving the keys we already have; one fetch runs at a time, and a check that needs
  it waits a bounded time (``DEFAULT_WAIT_SECONDS``), never the fetch timeout.

Only public signature keys are ever loaded: RSA (2048 bits or more), EC P-256 and Ed25519.
Symmetric (``oct``) keys in a JWKS are ignored on purpose: a key published by an identity
provider must never become an HMAC secret. Error messages and log lines name the source and
the key's position or ``kid``, never key material.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from policy_service.clock import SYSTEM_CLOCK, Clock
from policy_service.errors import KeySourceError
from policy_service.fetching import NoDowngradeRedirects, redact_url

__all__ = [
    "FileKeySource",
    "JwksFetcher",
    "KeySet",
    "KeySource",
    "PublicKey",
    "UrlKeySource",
    "UrllibJwksFetcher",
    "VerificationKey",
    "b64url_decode",
    "parse_jwks",
]

logger = logging.getLogger(__name__)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey

MIN_RSA_BITS = 2048  # shorter RSA keys are factorable in practice; refuse to trust them
MAX_JWKS_BYTES = 1 << 20  # a JWKS is a few KiB; a bigger answer is an error, not a key set
DEFAULT_FETCH_TIMEOUT_SECONDS = 5.0  # a fetch runs in the background: no check waits this long
# The longest a check waits for a fetch it needs (an unknown kid, nothing cached yet): well
# under Envoy's 1 s ext_authz timeout, so the check is still answered (refused) in time.
DEFAULT_WAIT_SECONDS = 0.3
# After a failed fetch the cache is due again this soon (or after jwks_cache_seconds when
# shorter): tokens may be failing meanwhile, and one fetch per few seconds per issuer is no
# burden for a provider. The unknown-kid limit does not apply to these.
FAILED_FETCH_RETRY_SECONDS = 5.0

_RSA_ALGS = frozenset({"RS256", "PS256"})
_EC_ALGS = frozenset({"ES256"})
_OKP_ALGS = frozenset({"EdDSA"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url decoding (RFC 7515 section 2).

    ``base64.urlsafe_b64decode`` silently drops characters outside the alphabet, so the
    alphabet is checked first: two different strings must not decode to the same bytes.
    Raises ``ValueError``.
    """
    if not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def _b64url_uint(value: object) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError("missing or empty number")
    return int.from_bytes(b64url_decode(value.rstrip("=")), "big")


def _b64url_fixed(value: object, size: int) -> bytes:
    if not isinstance(value, str):
        raise ValueError("missing coordinate")
    raw = b64url_decode(value.rstrip("="))
    if len(raw) != size:
        raise ValueError("coordinate has the wrong length")
    return raw


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key and the JWS algorithms it may verify.

    ``algorithms`` ties the key to its type: an RSA key only ever checks RS256/PS256, an EC
    key only ES256, an Ed25519 key only EdDSA. The verifier refuses a token whose ``alg`` is
    not in this set, which is what defeats algorithm confusion.
    """

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    public_key: PublicKey

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        if alg not in self.algorithms:
            return False
        key = self.public_key
        try:
            if isinstance(key, rsa.RSAPublicKey):
                if alg == "RS256":
                    key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
                else:  # PS256: RFC 7518 fixes the salt length to the hash length
                    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
                    key.verify(signature, signing_input, pss, hashes.SHA256())
            elif isinstance(key, ec.EllipticCurvePublicKey):
                # JWS carries ES256 signatures as raw r||s, 32 bytes each (not DER).
                if len(signature) != 64:
                    return False
                r = int.from_bytes(signature[:32], "big")
                s = int.from_bytes(signature[32:], "big")
                der = encode_dss_signature(r, s)
                key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            else:
                key.verify(signature, signing_input)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable snapshot of one JWKS, indexed by ``kid``."""

    keys: tuple[VerificationKey, ...]
    by_kid: Mapping[str, tuple[VerificationKey, ...]]

    @classmethod
    def of(cls, keys: Iterable[VerificationKey]) -> KeySet:
        keys = tuple(keys)
        by_kid: dict[str, tuple[VerificationKey, ...]] = {}
        for key in keys:
            if key.kid is not None:
                by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
        return cls(keys, by_kid)

    def find(self, kid: str | None) -> tuple[VerificationKey, ...]:
        """Keys with this ``kid``; every key when the token names none."""
        if kid is None:
            return self.keys
        return self.by_kid.get(kid, ())


class _SkipKey(Exception):
    """The key is well-formed but not one we use (wrong type, use, curve or alg)."""


def _parse_key(jwk: Mapping[str, Any]) -> VerificationKey:
    """Build a public verification key; raises ``_SkipKey`` or ``ValueError``.

    Private members (``d``, ``p``...) are never read: even if a provider mistakenly
    publishes them we only need, and only keep, the public half.
    """
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid is not a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise _SkipKey("not a signature key")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise _SkipKey("key_ops does not allow verify")

    public_key: PublicKey
    if kty == "RSA":
        public_key = rsa.RSAPublicNumbers(
            _b64url_uint(jwk.get("e")), _b64url_uint(jwk.get("n"))
        ).public_key()
        if public_key.key_size < MIN_RSA_BITS:
            raise _SkipKey("RSA key shorter than 2048 bits")
        algorithms = _RSA_ALGS
    elif kty == "EC":
        if jwk.get("crv") != "P-256":
            raise _SkipKey("unsupported curve")
        x = int.from_bytes(_b64url_fixed(jwk.get("x"), 32), "big")
        y = int.from_bytes(_b64url_fixed(jwk.get("y"), 32), "big")
        # public_key() checks that the point is on the curve (invalid-curve attacks).
        public_key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        algorithms = _EC_ALGS
    elif kty == "OKP":
        if jwk.get("crv") != "Ed25519":
            raise _SkipKey("unsupported curve")
        public_key = Ed25519PublicKey.from_public_bytes(_b64url_fixed(jwk.get("x"), 32))
        algorithms = _OKP_ALGS
    else:
        raise _SkipKey("unsupported key type")

    alg = jwk.get("alg")
    if alg is not None:
        # A key that declares its algorithm is used for that algorithm only.
        if alg not in algorithms:
            raise _SkipKey("declared alg is not supported for this key type")
        algorithms = frozenset({alg})
    return VerificationKey(kid=kid, kty=kty, algorithms=algorithms, public_key=public_key)


def parse_jwks(data: bytes, *, source: str, strict: bool) -> KeySet:
    """Parse a JWKS document.

    Keys we do not use are skipped silently. A key of a supported type that cannot be
    parsed raises ``KeySourceError`` when ``strict`` (an operator's file: fail loudly), and
    is logged and skipped otherwise (a provider's URL: one bad key must not hide the rest).
    A document that is not a JWKS at all always raises.
    """
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise KeySourceError(f"{source}: not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySourceError(f"{source}: not a JWKS (expected an object with a 'keys' list)")
    keys: list[VerificationKey] = []
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            problem = f"{source}: key #{index} is not an object"
        else:
            try:
                keys.append(_parse_key(jwk))
                continue
            except _SkipKey as skip:
                logger.debug("%s: ignoring key #%d: %s", source, index, skip)
                continue
            except (ValueError, TypeError, OverflowError):
                # The exception text may quote the offending value; name the key instead.
                problem = f"{source}: key #{index}{_kid_note(jwk)} is malformed"
        if strict:
            raise KeySourceError(problem)
        logger.warning("%s; ignoring it", problem)
    return KeySet.of(keys)


def _kid_note(jwk: Mapping[str, Any]) -> str:
    kid = jwk.get("kid")
    return f" (kid {kid!r})" if isinstance(kid, str) and len(kid) <= 128 else ""


class KeySource(Protocol):
    """Where one issuer's public keys come from."""

    async def start(self) -> None: ...

    async def keys_for(self, kid: str | None) -> tuple[VerificationKey, ...] | None:
        """Keys matching ``kid`` (all keys when ``None``); ``None`` when no keys are loaded."""
        ...

    async def aclose(self) -> None: ...


class FileKeySource:
    """A JWKS read from a file once, at start; or given as the bundle loader read it."""

    def __init__(self, path: str, document: bytes | None = None) -> None:
        self._path = path
        self._document = document
        self._keys: KeySet | None = None

    def load(self) -> None:
        try:
            data = Path(self._path).read_bytes() if self._document is None else self._document
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise KeySourceError(f"JWKS file {self._path}: cannot read ({reason})") from None
        if len(data) > MAX_JWKS_BYTES:
            raise KeySourceError(f"JWKS file {self._path}: larger than {MAX_JWKS_BYTES} bytes")
        self._keys = parse_jwks(data, source=f"JWKS file {self._path}", strict=True)
        if not self._keys.keys:
            logger.warning("JWKS file %s has no usable signature keys", self._path)

    async def start(self) -> None:
        await asyncio.to_thread(self.load)

    async def keys_for(self, kid: str | None) -> tuple[VerificationKey, ...] | None:
        return None if self._keys is None else self._keys.find(kid)

    async def aclose(self) -> None:
        return None


class JwksFetcher(Protocol):
    """Fetches a JWKS document. Raises ``KeySourceError`` on any failure."""

    async def fetch(self, url: str, timeout_seconds: float) -> bytes: ...


class UrllibJwksFetcher:
    """The production fetcher: ``urllib`` in a worker thread, with a timeout and size cap."""

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener(NoDowngradeRedirects())

    async def fetch(self, url: str, timeout_seconds: float) -> bytes:
        return await asyncio.to_thread(self._get, url, timeout_seconds)

    def _get(self, url: str, timeout_seconds: float) -> bytes:
        where = redact_url(url)
        try:
            scheme = urllib.parse.urlsplit(url).scheme
        except ValueError:
            raise KeySourceError(f"JWKS URL {where}: not a valid URL") from None
        if scheme not in ("http", "https"):
            # urllib would also open file:// and ftp:// URLs; a JWKS URL is HTTP(S) only.
            raise KeySourceError(f"JWKS URL {where}: only http and https are supported")
        request = urllib.request.Request(  # noqa: S310 - scheme checked just above
            url, headers={"Accept": "application/json", "User-Agent": "policy-service"}
        )
        try:
            with self._opener.open(request, timeout=timeout_seconds) as response:
                data: bytes = response.read(MAX_JWKS_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise KeySourceError(f"JWKS URL {where}: HTTP status {exc.code}") from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad URLs
            raise KeySourceError(f"JWKS URL {where}: {type(exc).__name__}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise KeySourceError(f"JWKS URL {where}: larger than {MAX_JWKS_BYTES} bytes")
        return data


class UrlKeySource:
    """A JWKS fetched from a URL: cached, refreshed in the background, never waited on long.

    Two things start a fetch, each with its own pace. The cache coming due (``cache_seconds``
    after a good fetch; after a failed one ``FAILED_FETCH_RETRY_SECONDS``, or ``cache_seconds``
    if shorter) starts one in the background: checks keep verifying with the keys already
    held meanwhile. An unknown ``kid``, which any client can send, starts one only if
    no fetch at all began in the last ``min_refresh_seconds``. One fetch runs at a time; a
    check that needs it (an unknown kid, or nothing cached yet) waits for it at most
    ``wait_seconds`` and then answers with what is held, while the fetch carries on for the
    checks after it.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float,
        min_refresh_seconds: float,
        fetcher: JwksFetcher | None = None,
        clock: Clock = SYSTEM_CLOCK,
        timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
    ) -> None:
        self._url = url
        self._where = f"JWKS URL {redact_url(url)}"
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._fetcher: JwksFetcher = fetcher if fetcher is not None else UrllibJwksFetcher()
        self._clock = clock
        self._timeout_seconds = timeout_seconds
        self._wait_seconds = wait_seconds
        self._keys: KeySet | None = None
        self._due_at = -math.inf  # monotonic time the next cache-driven fetch is due
        self._last_attempt = -math.inf  # monotonic time the last fetch (of either kind) began
        self._inflight: asyncio.Task[None] | None = None
        self.refreshes_ok = 0
        self.refreshes_failed = 0

    @property
    def loaded(self) -> bool:
        return self._keys is not None

    async def start(self) -> None:
        """Prefetch, waiting for the answer (or the fetch timeout): no check waits on this.

        A failure is logged (by the fetch) and not raised: the cache is due again soon.
        """
        inflight = self._inflight or self._begin_fetch(self._clock.monotonic())
        await asyncio.shield(inflight)

    async def wait_idle(self) -> None:
        """Wait for the fetch under way, if any, to finish (tests, benchmarks)."""
        inflight = self._inflight
        if inflight is not None:
            await asyncio.shield(inflight)

    async def keys_for(self, kid: str | None) -> tuple[VerificationKey, ...] | None:
        now = self._clock.monotonic()
        if self._inflight is None and now >= self._due_at:
            self._begin_fetch(now)  # in the background: cached keys still answer below
        keys = self._keys
        if keys is not None:
            found = keys.find(kid)
            if found:
                return found
            # Unknown kid: the provider may have rotated keys since our last fetch.
            if self._inflight is None and now - self._last_attempt >= self._min_refresh_seconds:
                self._begin_fetch(now)
        inflight = self._inflight
        if inflight is None:
            return None if keys is None else ()
        # Bounded: Envoy gives up on the whole check after its ext_authz timeout (1 s by
        # default), and a hanging provider must not take every new token down with it.
        try:
            async with asyncio.timeout(self._wait_seconds):
                # shield: a waiter timing out or being cancelled must not cancel the fetch.
                await asyncio.shield(inflight)
        except TimeoutError:
            logger.debug("%s: still fetching; answering with the keys held", self._where)
        keys = self._keys
        return None if keys is None else keys.find(kid)

    def _begin_fetch(self, now: float) -> asyncio.Task[None]:
        self._last_attempt = now
        task = self._inflight = asyncio.create_task(self._fetch())
        task.add_done_callback(self._clear_inflight)
        return task

    def _clear_inflight(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> None:
        try:
            data = await self._fetcher.fetch(self._url, self._timeout_seconds)
            keys = parse_jwks(data, source=self._where, strict=False)
        except KeySourceError as exc:
            self._failed()
            cached = "serving cached keys" if self._keys is not None else "no keys cached"
            logger.warning("JWKS refresh failed (%s): %s", cached, exc)
            return
        except Exception:
            self._failed()
            logger.exception("%s: unexpected error while refreshing", self._where)
            return
        self.refreshes_ok += 1
        self._keys = keys
        self._due_at = self._clock.monotonic() + self._cache_seconds
        logger.info("%s: loaded %d signature key(s)", self._where, len(keys.keys))

    def _failed(self) -> None:
        self.refreshes_failed += 1
        retry = min(self._cache_seconds, FAILED_FETCH_RETRY_SECONDS)
        self._due_at = self._clock.monotonic() + retry

    async def aclose(self) -> None:
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
