"""Private key material must never ship inside a bundle.

A bundle is copied to every gateway, served over HTTP and kept in version control; a signing
key packed into it (``keygen`` run inside the policy folder, then ``sign DIR --archive``)
would hand anyone who can read a bundle the power to sign the next one. ``sign`` refuses
such a bundle before writing anything, and the loader refuses to load one (defence in
depth: a bundle built by other tools goes through the same check).

Every file of the snapshot is looked at, whatever its name: a PEM private key of any kind
(PKCS#8, encrypted PKCS#8, PKCS#1 RSA, SEC1 EC, OpenSSH...) anywhere in its bytes, or JSON
holding a JWK with private members. A finding names the file and the kind of material,
never the material itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from policy_service.bundles.files import BundleFiles
from policy_service.errors import BundleProblem

__all__ = ["JWK_PRIVATE_MEMBERS", "find_private_key", "private_key_problems"]

# "-----BEGIN PRIVATE KEY-----", "-----BEGIN ENCRYPTED PRIVATE KEY-----",
# "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN OPENSSH PRIVATE KEY-----"...
_PEM_PRIVATE = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----")
# RFC 7518 section 6: the private members of EC, OKP and RSA keys ("oth" too: RSA primes).
JWK_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
# A JSON document is walked this deep at most; a JWKS nests three levels.
_MAX_DEPTH = 32


def find_private_key(content: bytes) -> str | None:
    """What private key material ``content`` holds, in words (never the material), or None."""
    match = _PEM_PRIVATE.search(content)
    if match is not None:
        label = match.group(1).decode("ascii")
        return f"a PEM private key ('-----BEGIN {label}PRIVATE KEY-----')"
    stripped = content.lstrip()
    if not stripped.startswith((b"{", b"[")):
        return None
    try:
        document = json.loads(content)
    except (ValueError, RecursionError):
        return None  # not JSON: the loader says so if the bundle reads it as JSON
    return _private_jwk(document, 0)


def _private_jwk(node: Any, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return None
    children: Iterable[Any]
    if isinstance(node, dict):
        if isinstance(node.get("kty"), str):
            members = [name for name in JWK_PRIVATE_MEMBERS if name in node]
            if node["kty"] == "oct" and "k" in node:
                members.append("k")  # a symmetric key is secret as a whole
            if members:
                named = ", ".join(f"'{name}'" for name in members)
                return f"a private JWK (members {named})"
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _private_jwk(child, depth + 1)
        if found is not None:
            return found
    return None


def private_key_problems(files: BundleFiles) -> list[BundleProblem]:
    """One problem per file of the snapshot that holds private key material."""
    problems = []
    for name in sorted(files.files):
        found = find_private_key(files.files[name])
        if found is not None:
            shown = "".join(character if character.isprintable() else "?" for character in name)
            problems.append(
                BundleProblem(
                    files.source,
                    "",
                    f"file '{shown}' holds {found}; private keys must never ship in a bundle: "
                    "move it out of the bundle",
                )
            )
    return problems
