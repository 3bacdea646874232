"""The meaning pass for who may call: issuers (with their JWKS files) and API keys, and
the scope grammar every scope in a bundle must follow."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from policy_service.bundles.files import BundleFileError, BundleFiles
from policy_service.bundles.problems import NAME, Problems
from policy_service.errors import KeySourceError
from policy_service.gen.policy_service.bundle.v1 import bundle_pb2
from policy_service.identity.config import (
    ASYMMETRIC_ALGORITHMS,
    SYMMETRIC_ALGORITHMS,
    ApiKeyEntry,
    IssuerConfig,
)
from policy_service.identity.jwks import parse_jwks
from policy_service.identity.scopes import is_scope_token

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_MAX_LEEWAY_SECONDS = 600.0


def compile_issuers(
    message: bundle_pb2.Bundle, files: BundleFiles, environ: Mapping[str, str], problems: Problems
) -> tuple[IssuerConfig, ...]:
    compiled: list[IssuerConfig] = []
    names: set[str] = set()
    for index, issuer in enumerate(message.issuers):
        path = f"issuers[{index}]"
        ok = True
        if not NAME.match(issuer.name):
            problems.add(f"{path}.name", "must be a short lower-case name like 'corp-idp'")
            ok = False
        elif issuer.name in names:
            problems.add(f"{path}.name", f"duplicate issuer name '{issuer.name}'")
            ok = False
        names.add(issuer.name)
        if not issuer.issuer:
            problems.add(f"{path}.issuer", "is required: the exact `iss` value of its tokens")
            ok = False
        algorithms = tuple(issuer.algorithms)
        if not algorithms:
            problems.add(f"{path}.algorithms", "is required, e.g. [ES256] or [RS256]")
            ok = False
        for position, algorithm in enumerate(algorithms):
            if algorithm not in ASYMMETRIC_ALGORITHMS | SYMMETRIC_ALGORITHMS:
                allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS | SYMMETRIC_ALGORITHMS))
                problems.add(
                    f"{path}.algorithms[{position}]",
                    f"'{algorithm}' is not supported; use one of {allowed}",
                )
                ok = False
        secret: bytes | None = None
        if "HS256" in algorithms:
            if not issuer.hs256_secret_env:
                problems.add(
                    f"{path}.algorithms",
                    "HS256 needs hs256_secret_env naming the variable that holds the secret",
                )
                ok = False
            elif not environ.get(issuer.hs256_secret_env):
                problems.add(
                    f"{path}.hs256_secret_env",
                    f"environment variable '{issuer.hs256_secret_env}' is not set or empty",
                )
                ok = False
            else:
                secret = environ[issuer.hs256_secret_env].encode()
        elif issuer.hs256_secret_env:
            problems.add(f"{path}.hs256_secret_env", "is set but HS256 is not in algorithms")
            ok = False
        needs_keys = any(alg in ASYMMETRIC_ALGORITHMS for alg in algorithms)
        jwks_file: str | None = None
        jwks_document: bytes | None = None
        if issuer.jwks_url and issuer.jwks_file:
            problems.add(path, "give jwks_url or jwks_file, not both")
            ok = False
        elif issuer.jwks_url:
            if urlsplit(issuer.jwks_url).scheme not in ("https", "http"):
                problems.add(f"{path}.jwks_url", "must be an http(s) URL")
                ok = False
        elif issuer.jwks_file:
            jwks_file = issuer.jwks_file
            jwks_document = _jwks_document(files, jwks_file, f"{path}.jwks_file", problems)
            ok = ok and jwks_document is not None
        elif needs_keys:
            problems.add(path, "needs jwks_url or jwks_file for its signing keys")
            ok = False
        leeway = issuer.leeway_seconds if issuer.HasField("leeway_seconds") else 30.0
        if not 0 <= leeway <= _MAX_LEEWAY_SECONDS:
            problems.add(f"{path}.leeway_seconds", f"must be between 0 and {_MAX_LEEWAY_SECONDS:g}")
            ok = False
        cache_seconds = (
            issuer.jwks_cache_seconds if issuer.HasField("jwks_cache_seconds") else 300.0
        )
        if cache_seconds <= 0:
            problems.add(f"{path}.jwks_cache_seconds", "must be greater than 0")
            ok = False
        for position, audience in enumerate(issuer.audiences):
            if not audience:
                problems.add(f"{path}.audiences[{position}]", "must not be empty")
                ok = False
        if ok:
            compiled.append(
                IssuerConfig(
                    name=issuer.name,
                    issuer=issuer.issuer,
                    algorithms=algorithms,
                    jwks_url=issuer.jwks_url or None,
                    jwks_file=jwks_file,
                    jwks_document=jwks_document,
                    hs256_secret=secret,
                    audiences=tuple(issuer.audiences),
                    leeway_seconds=leeway,
                    jwks_cache_seconds=cache_seconds,
                )
            )
    return tuple(compiled)


def _jwks_document(
    files: BundleFiles, reference: str, path: str, problems: Problems
) -> bytes | None:
    """The JWKS file's bytes, read through the bundle's snapshot and parsed now, so a bad
    key file refuses the bundle instead of failing later in the verifier."""
    try:
        document = files.read(files.resolve(reference))
    except BundleFileError as exc:
        problems.add(path, f"file '{reference}' {exc.message}")
        return None
    try:
        parse_jwks(document, source=f"file '{reference}'", strict=True)
    except KeySourceError as exc:
        problems.add(path, str(exc))
        return None
    return document


def compile_api_keys(message: bundle_pb2.Bundle, problems: Problems) -> tuple[ApiKeyEntry, ...]:
    compiled: list[ApiKeyEntry] = []
    ids: set[str] = set()
    hashes: set[str] = set()
    for index, key in enumerate(message.api_keys):
        path = f"api_keys[{index}]"
        ok = True
        if not NAME.match(key.id):
            problems.add(f"{path}.id", "must be a short lower-case name like 'ci-bot'")
            ok = False
        elif key.id in ids:
            problems.add(f"{path}.id", f"duplicate api key id '{key.id}'")
            ok = False
        ids.add(key.id)
        if not _SHA256_HEX.match(key.sha256):
            problems.add(
                f"{path}.sha256",
                "must be 64 lower-case hex digits (`policy-service hash-key` prints it); "
                "never put the key itself in a bundle",
            )
            ok = False
        elif key.sha256 in hashes:
            problems.add(f"{path}.sha256", "the same key hash appears twice")
            ok = False
        hashes.add(key.sha256)
        if not key.subject:
            problems.add(f"{path}.subject", "is required: who the key acts as")
            ok = False
        scopes = check_scopes(key.scopes, f"{path}.scopes", problems)
        if ok:
            compiled.append(ApiKeyEntry(key.id, key.sha256, key.subject, scopes))
    return tuple(compiled)


def check_scopes(values: object, path: str, problems: Problems) -> frozenset[str]:
    scopes = list(values)  # type: ignore[call-overload]
    for position, scope in enumerate(scopes):
        # The same grammar tokens are parsed with (RFC 6749 scope-token): a scope no token
        # can carry is a mistake, and one ending in "\n" or holding a NBSP looks right.
        if is_scope_token(scope):
            continue
        # repr() shows a tab, line break or NBSP as an escape, so the message stays one line.
        if _PRINTABLE_ASCII.fullmatch(scope):
            problems.add(
                f"{path}[{position}]", f"{scope!r} is not a valid scope (no spaces or quotes)"
            )
        else:
            problems.add(
                f"{path}[{position}]",
                f"{scope!r} is not a valid scope "
                "(visible ASCII only: no tabs, line breaks or non-ASCII characters)",
            )
    return frozenset(scopes)
