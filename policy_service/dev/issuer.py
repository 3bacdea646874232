"""The dev stack's token issuer: a signing key kept in the state directory.

The key survives restarts (tokens minted yesterday still verify today) and never leaves
the state directory; the bundle only references the public JWKS written next to it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from policy_service.errors import ConfigError
from policy_service.identity.signing import SigningKey

DEV_ISSUER = "https://dev-issuer.invalid"  # .invalid: plainly not a real authorization server
KEY_FILE = "dev-signing-key.pem"
JWKS_FILE = "dev-jwks.json"
META_FILE = "dev-issuer.json"
API_KEY_FILE = "dev-api-key.txt"


@dataclass(frozen=True)
class DevIssuer:
    key: SigningKey
    issuer: str
    audiences: Mapping[str, str]  # upstream name -> canonical resource URI

    @classmethod
    def ensure(cls, state_dir: Path, audiences: Mapping[str, str]) -> DevIssuer:
        """Load the key from ``state_dir`` or create it; record the audiences for `token`."""
        state_dir.mkdir(parents=True, exist_ok=True)
        key_path = state_dir / KEY_FILE
        if key_path.exists():
            key = SigningKey.from_pem(key_path.read_bytes(), "ES256", kid=_kid(state_dir))
        else:
            key = SigningKey.generate("ES256", kid=f"dev-{secrets.token_hex(4)}")
            _write_private(key_path, key.to_pem())
        (state_dir / JWKS_FILE).write_text(json.dumps(key.jwks(), indent=2))
        meta = {"issuer": DEV_ISSUER, "kid": key.kid, "audiences": dict(audiences)}
        (state_dir / META_FILE).write_text(json.dumps(meta, indent=2))
        return cls(key, DEV_ISSUER, dict(audiences))

    @classmethod
    def load(cls, state_dir: Path) -> DevIssuer:
        meta_path = state_dir / META_FILE
        if not meta_path.exists():
            raise ConfigError(
                f"no dev issuer in '{state_dir}': start the stack once with `policy-service dev`"
            )
        meta = json.loads(meta_path.read_text())
        key = SigningKey.from_pem((state_dir / KEY_FILE).read_bytes(), "ES256", kid=meta["kid"])
        return cls(key, meta["issuer"], meta["audiences"])

    def audience_for(self, upstream: str) -> str:
        try:
            return self.audiences[upstream]
        except KeyError:
            known = ", ".join(sorted(self.audiences))
            raise ConfigError(f"unknown upstream '{upstream}' (known: {known})") from None

    def mint(
        self,
        *,
        subject: str,
        scopes: Sequence[str],
        audience: str,
        client_id: str | None = None,
        lifetime_seconds: int = 3600,
    ) -> str:
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "scope": " ".join(scopes),
        }
        if client_id:
            claims["client_id"] = client_id
        return self.key.mint(claims, lifetime_seconds=lifetime_seconds)


def ensure_api_key(state_dir: Path) -> str:
    """A dev API key, created once; only its hash goes into the bundle."""
    path = state_dir / API_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    key = f"dev-{secrets.token_urlsafe(24)}"
    _write_private(path, key + "\n")
    return key


def _kid(state_dir: Path) -> str | None:
    meta_path = state_dir / META_FILE
    if meta_path.exists():
        kid = json.loads(meta_path.read_text()).get("kid")
        return str(kid) if kid else None
    return None


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start: never world-readable, not even briefly.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
