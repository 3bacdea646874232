"""Signed bundles: a manifest of file hashes, signed as a JWS, checked before compiling.

A signature file (``<entry>.sig``) holds one JWS compact serialization. Its payload is the
manifest, canonical JSON::

    {"entry": "bundle.yaml", "files": {"bundle.yaml": "<sha256 hex>", "jwks.json": "..."},
     "format": "policy-service.bundle-manifest.v1", "revision": "2025-06-01",
     "signed_at": "2025-06-01T12:00:00Z"}

and its protected header is exactly ``alg``, ``kid`` and ``typ: policy-bundle+jws``. Keys are
Ed25519 (``EdDSA``) or EC P-256 (``ES256``) (``signing_keys``, re-exported here); the ``kid``
is derived from the public key, so "signed by another key" can be told apart from "tampered
with", and of several verification keys (a rotation) the ``kid`` picks the one to check with.

The verifier trusts nothing in the signature file until the signature checks out: the
algorithm comes from the configured key, never from the header (an ``HS256`` JWS "signed"
with the public key as its secret, or an ``alg: none`` one, is refused before any crypto).
A verified snapshot is sealed to exactly the manifest's files, so the compile that follows
cannot read a byte that was not signed.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidSignatureError, PyJWTError

from policy_service.bundles.files import SIGNATURE_SUFFIX, BundleFileError, BundleFiles
from policy_service.bundles.loader import load_bundle_files
from policy_service.bundles.signing_keys import (
    KEY_ALGORITHMS,
    PASSPHRASE_ENV_VAR,
    BundleSigningKey,
    BundleVerificationKey,
    generate_signing_key,
    load_signing_key,
    load_verification_key,
    verification_keys,
)
from policy_service.errors import BundleError, BundleProblem
from policy_service.policy.model import CompiledBundle

__all__ = [
    "KEY_ALGORITHMS",
    "MANIFEST_FORMAT",
    "PASSPHRASE_ENV_VAR",
    "SIGNATURE_TYPE",
    "BundleSigningKey",
    "BundleVerificationKey",
    "Manifest",
    "generate_signing_key",
    "load_signed_bundle",
    "load_signing_key",
    "load_verification_key",
    "sign_bundle",
    "signature_name",
    "signed_key_id",
    "verification_keys",
    "verify_bundle",
]

MANIFEST_FORMAT = "policy-service.bundle-manifest.v1"
SIGNATURE_TYPE = "policy-bundle+jws"
_HEADER_KEYS = {"alg", "kid", "typ"}
_MANIFEST_KEYS = {"format", "revision", "entry", "files", "signed_at"}
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Manifest:
    """What a signature covers: every file of the bundle by SHA-256, and its revision."""

    revision: str
    entry: str
    files: Mapping[str, str]  # bundle-relative name -> lower-case hex SHA-256
    signed_at: str  # RFC 3339, UTC
    format: str = MANIFEST_FORMAT

    def to_bytes(self) -> bytes:
        document = {
            "format": self.format,
            "revision": self.revision,
            "entry": self.entry,
            "files": dict(self.files),
            "signed_at": self.signed_at,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


class _ManifestInvalid(Exception):
    """The signed payload is not a manifest; the message says what is wrong."""


def _parse_manifest(payload: bytes) -> Manifest:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise _ManifestInvalid("it is not JSON") from None
    if not isinstance(document, dict):
        raise _ManifestInvalid("it must be a JSON object")
    if "format" in document and document["format"] != MANIFEST_FORMAT:
        # Checked first, so a manifest of a later format is reported as that, not as noise.
        raise _ManifestInvalid(
            f"its format is {_quoted(document['format'])}, expected '{MANIFEST_FORMAT}'"
        )
    if set(document) != _MANIFEST_KEYS:
        raise _ManifestInvalid(f"it must hold exactly {', '.join(sorted(_MANIFEST_KEYS))}")
    for key in ("revision", "entry", "signed_at"):
        if not isinstance(document[key], str) or not document[key]:
            raise _ManifestInvalid(f"'{key}' must be a non-empty string")
    try:
        signed_at = datetime.fromisoformat(document["signed_at"])
    except ValueError:
        signed_at = None
    if signed_at is None or signed_at.utcoffset() is None:
        raise _ManifestInvalid("'signed_at' must be an RFC 3339 time with a time zone")
    files = document["files"]
    if not isinstance(files, dict) or not files:
        raise _ManifestInvalid("'files' must map file names to SHA-256 digests")
    for name, digest in files.items():
        if not _is_plain_name(name):
            raise _ManifestInvalid(f"file name {_quoted(name)} is not a plain relative name")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise _ManifestInvalid(f"the digest of {_quoted(name)} is not a lower-case hex SHA-256")
    if document["entry"] not in files:
        raise _ManifestInvalid(f"its entry {_quoted(document['entry'])} is not among its files")
    return Manifest(
        revision=document["revision"],
        entry=document["entry"],
        files=dict(files),
        signed_at=document["signed_at"],
        format=document["format"],
    )


def _is_plain_name(name: str) -> bool:
    """Normalized, relative, inside the bundle: what ``BundleFiles.resolve`` would produce."""
    parts = PurePosixPath(name).parts
    return (
        bool(name)
        and not name.startswith("/")
        and "\\" not in name
        and "\x00" not in name
        and "/".join(parts) == name
        and all(part not in (".", "..") for part in parts)
    )


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _rfc3339(moment: datetime) -> str:
    if moment.utcoffset() is None:
        raise ValueError("signing time must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signature_name(files: BundleFiles) -> str:
    """The file name the signature of ``files`` lives under, beside its entry."""
    return PurePosixPath(files.entry).name + SIGNATURE_SUFFIX


def sign_bundle(
    files: BundleFiles,
    key: BundleSigningKey,
    *,
    revision: str,
    now: datetime | None = None,
) -> bytes:
    """The signature file for ``files``: a JWS over a manifest of every file in the snapshot.

    Load the bundle first (``load_bundle_files``): that is what reads the JWKS files a
    single-file bundle names into the snapshot, and so into the manifest.
    """
    manifest = Manifest(
        revision=revision,
        entry=files.entry,
        files={name: _sha256(files.files[name]) for name in sorted(files.files)},
        signed_at=_rfc3339(now if now is not None else datetime.now(UTC)),
    )
    token = PyJWS().encode(
        manifest.to_bytes(),
        key.private_key,
        algorithm=key.algorithm,
        headers={"kid": key.key_id, "typ": SIGNATURE_TYPE},
    )
    return token.encode("ascii") + b"\n"


def _key_ids(keys: Sequence[BundleVerificationKey]) -> str:
    return ", ".join(f"'{key.key_id}'" for key in keys)


def verify_bundle(
    files: BundleFiles, keys: BundleVerificationKey | Sequence[BundleVerificationKey]
) -> Manifest:
    """Check ``files`` against its signature and seal it to exactly the signed files.

    The signature's ``kid`` picks the one key it is checked with, among ``keys``; nothing
    else in its header is trusted. Raises ``BundleError`` with one problem saying precisely
    what failed.
    """
    ring = verification_keys(keys)
    one = len(ring) == 1

    def refuse(message: str) -> BundleError:
        return BundleError([BundleProblem(files.source, "", message)])

    if files.signature is None:
        raise refuse(
            "is not signed, but a verification key is configured: expected the signature "
            f"file '{signature_name(files)}'"
        )
    token = files.signature.strip()
    try:
        header = PyJWS().get_unverified_header(token)
    except PyJWTError:
        raise refuse(
            f"the signature file '{signature_name(files)}' is not a JWS compact serialization"
        ) from None
    algorithms = sorted({key.algorithm for key in ring})
    if header.get("alg") not in algorithms:
        accepted = ", ".join(f"'{algorithm}'" for algorithm in algorithms)
        whose = "the verification key accepts" if one else "the verification keys accept"
        raise refuse(
            f"the signature uses algorithm {_quoted(header.get('alg'))}, but {whose} only "
            f"{accepted}"
        )
    if set(header) != _HEADER_KEYS or header.get("typ") != SIGNATURE_TYPE:
        raise refuse(
            "the signature is not a policy bundle signature: its header must hold exactly "
            f"alg, kid and typ '{SIGNATURE_TYPE}'"
        )
    chosen = [key for key in ring if key.key_id == header["kid"]]
    if not chosen:
        which = "the verification key" if one else "any of the verification keys"
        raise refuse(
            f"the bundle was signed by key {_quoted(header['kid'])}, not by {which} "
            f"{_key_ids(ring)}"
        )
    key = chosen[0]
    if header["alg"] != key.algorithm:
        raise refuse(
            f"the signature uses algorithm {_quoted(header['alg'])}, but key '{key.key_id}' "
            f"accepts only '{key.algorithm}'"
        )
    try:
        # The allow-list is the configured key's one algorithm, so the header cannot choose.
        verified = PyJWS(algorithms=[key.algorithm]).decode_complete(
            token, key.public_key, algorithms=[key.algorithm]
        )
    except InvalidSignatureError:
        raise refuse(f"the signature is not valid for key '{key.key_id}'") from None
    except (PyJWTError, binascii.Error):
        raise refuse(
            f"the signature file '{signature_name(files)}' is not a JWS compact serialization"
        ) from None
    payload: Any = verified["payload"]
    try:
        manifest = _parse_manifest(payload)
    except _ManifestInvalid as exc:
        raise refuse(f"the signed manifest is not valid: {exc}") from None
    if manifest.entry != files.entry:
        raise refuse(
            f"the signed manifest is for entry {_quoted(manifest.entry)}, but the bundle's entry "
            f"is '{files.entry}'"
        )

    signed: dict[str, bytes] = {}
    for name, digest in sorted(manifest.files.items()):
        if name not in files.files and (
            files.sealed or files.root is None or not (files.root / name).is_file()
        ):
            raise refuse(f"file {_quoted(name)} is signed but missing from the bundle")
        try:
            content = files.read(name)
        except BundleFileError as exc:
            raise refuse(f"file {_quoted(name)} is signed but {exc.message}") from None
        if _sha256(content) != digest:
            raise refuse(f"file {_quoted(name)} has changed since it was signed")
        signed[name] = content
    # A directory or archive snapshot holds everything it shipped with; a single file holds
    # what has been read so far. Either way nothing in it may be unsigned.
    for name in sorted(files.files):
        if name not in manifest.files:
            raise refuse(f"file {_quoted(name)} is in the bundle but not in the signed manifest")
    files.seal(signed)
    return manifest


def signed_key_id(files: BundleFiles) -> str | None:
    """The key id a signature names; to be trusted only once ``verify_bundle`` has passed."""
    try:
        kid = PyJWS().get_unverified_header((files.signature or b"").strip()).get("kid")
    except PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


def load_signed_bundle(
    files: BundleFiles,
    keys: BundleVerificationKey | Sequence[BundleVerificationKey] | None,
    *,
    environ: Mapping[str, str] | None = None,
) -> CompiledBundle:
    """The one way the server and the reloader turn a snapshot into a bundle.

    With keys: verify (with the key the signature names), then compile the sealed snapshot,
    then check the signed revision is the bundle's own. Without keys (None or none) a
    signature file is not looked at at all: an unchecked signature proves nothing, and
    checking it against nothing would only suggest it did.
    """
    if keys is None or (not isinstance(keys, BundleVerificationKey) and not keys):
        return load_bundle_files(files, environ=environ)
    manifest = verify_bundle(files, keys)
    bundle = load_bundle_files(files, environ=environ)
    if manifest.revision != bundle.revision:
        # The hashes already match, so this is a signer's mistake, not tampering; but a
        # revision is what operators roll back by, so it must be the one that was signed.
        raise BundleError(
            [
                BundleProblem(
                    files.source,
                    "",
                    f"the signed manifest is for revision {_quoted(manifest.revision)}, but the "
                    f"bundle's revision is '{bundle.revision}'",
                )
            ]
        )
    return dataclasses.replace(bundle, signed_at=datetime.fromisoformat(manifest.signed_at))


def _quoted(value: object) -> str:
    """An untrusted header or manifest value, short and printable, for a message."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = "".join(character if character.isprintable() else "?" for character in text)
    if len(text) > 120:
        text = text[:117] + "..."
    return f"'{text}'"
