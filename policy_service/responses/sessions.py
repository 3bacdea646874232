"""MCP sessions bound to the principal that opened them.

When an upstream answers ``initialize`` with an ``Mcp-Session-Id``, the session belongs to
the principal (issuer and subject) whose request opened it. A later request carrying that
id under another principal is refused; so is one carrying an id nobody opened through the
gateway, or one whose binding has expired, with 404: the answer MCP clients take as "this
session is gone, start a new one". A token refreshed for the same principal keeps its
session. The binding ends when the upstream accepts the session's DELETE, or after
``ttl_seconds`` without use.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from enum import StrEnum

from policy_service.identity.principal import Principal
from policy_service.responses.shared import SharedState

# A binding used within this share of its TTL is not written again: a busy session costs
# one write per interval, not one per request.
_REFRESH_FRACTION = 0.25


class SessionVerdict(StrEnum):
    OWNED = "owned"
    UNKNOWN = "session_unknown"  # never bound here, ended, or expired
    FOREIGN = "session_principal_mismatch"  # bound to another principal


def owner_of(principal: Principal) -> str:
    """Who owns a session: a hash of the issuer and subject (the store holds no names)."""
    issuer = principal.claims.get("iss") if principal.claims else None
    text = f"{issuer if isinstance(issuer, str) else principal.issuer}\0{principal.subject}"
    return hashlib.sha256(text.encode()).hexdigest()


def _key(upstream: str, session_id: str) -> str:
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:40]
    return f"session:{upstream}:{digest}"


@dataclass(slots=True)
class _Known:
    owner: str
    refreshed_at: float


class SessionBindings:
    """Bindings in the shared state, with what this process has already seen kept near:
    a binding never changes owner, so a repeat request needs no round trip."""

    def __init__(self, shared: SharedState, max_local: int = 50_000) -> None:
        self.shared = shared
        self._local: dict[str, _Known] = {}
        self._max_local = max_local

    async def bind(
        self, upstream: str, session_id: str, principal: Principal, ttl_seconds: float
    ) -> None:
        key = _key(upstream, session_id)
        owner = owner_of(principal)
        await self.shared.put(key, owner, ttl_seconds)
        self._remember(key, owner)

    async def verdict(
        self, upstream: str, session_id: str, principal: Principal, ttl_seconds: float
    ) -> SessionVerdict:
        key = _key(upstream, session_id)
        now = time.monotonic()
        known = self._local.get(key)
        if known is None or now - known.refreshed_at > ttl_seconds * _REFRESH_FRACTION:
            owner = await self.shared.get(key)
            if owner is None:
                self._local.pop(key, None)
                return SessionVerdict.UNKNOWN
            if owner == owner_of(principal):
                await self.shared.put(key, owner, ttl_seconds)  # in use: the TTL restarts
            known = self._remember(key, owner)
        if known.owner != owner_of(principal):
            return SessionVerdict.FOREIGN
        return SessionVerdict.OWNED

    async def end(self, upstream: str, session_id: str) -> None:
        key = _key(upstream, session_id)
        self._local.pop(key, None)
        await self.shared.delete(key)

    def _remember(self, key: str, owner: str) -> _Known:
        if len(self._local) >= self._max_local:
            self._local.pop(next(iter(self._local)))
        known = self._local[key] = _Known(owner, time.monotonic())
        return known
