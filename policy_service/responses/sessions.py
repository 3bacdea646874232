"""MCP sessions bound to the principal that opened them.

When an upstream answers ``initialize`` with an ``Mcp-Session-Id``, the session belongs to
the principal (credential kind, issuer and subject) whose request opened it. A later request
carrying that id under another principal is refused; so is one carrying an id nobody opened
through the gateway, or one whose binding has expired, with 404: the answer MCP clients take
as "this session is gone, start a new one". A token refreshed for the same principal keeps
its session. The binding ends when the upstream accepts the session's DELETE, or after
``ttl_seconds`` without use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

import orjson

from policy_service.clock import SYSTEM_CLOCK, Clock
from policy_service.identity.principal import Principal
from policy_service.responses.shared import SharedState

# A binding used within this share of its TTL is not written again: a busy session costs
# one write per interval, not one per request.
_REFRESH_FRACTION = 0.25
# How long this process answers from what it last read, without asking the store: short,
# because a DELETE through another replica ends the binding in the store only. A foreign
# principal is never let through by it (owners never change); at worst the owner's requests
# reach an upstream that already ended the session for this long.
_LOCAL_SECONDS = 1.0


_OWNER = ("responses.sessions", "owner")  # its key in Principal.derived


class SessionVerdict(StrEnum):
    OWNED = "owned"
    UNKNOWN = "session_unknown"  # never bound here, ended, or expired
    FOREIGN = "session_principal_mismatch"  # bound to another principal


class BindOutcome(StrEnum):
    BOUND = "bound"
    # The id is already another principal's: only a broken upstream hands one id out twice,
    # and rebinding it would give the session to whoever initialized last.
    CONFLICT = "conflict"


def owner_of(principal: Principal) -> str:
    """Who owns a session: a hash of the credential kind, issuer and subject (the store
    holds no names). The token's ``iss`` claim when there is one, so that renaming an
    issuer in the bundle keeps its sessions; a JSON array, so no issuer and subject can be
    spliced into another pair (``"a\\0" + "b"`` against ``"a" + "\\0b"``)."""
    owner = principal.derived.get(_OWNER)  # a cached principal's later checks reuse it
    if isinstance(owner, str):
        return owner
    issuer = principal.claims.get("iss") if principal.claims else None
    text = orjson.dumps(
        [
            principal.credential.value,
            issuer if isinstance(issuer, str) else principal.issuer,
            principal.subject,
        ]
    )
    owner = principal.derived[_OWNER] = hashlib.sha256(text).hexdigest()
    return owner


def session_key(upstream: str, session_id: str) -> str:
    """The store key of a session: hashed, so neither the store nor its dumps hold an id a
    reader could replay."""
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:40]
    return f"session:{upstream}:{digest}"


@dataclass(slots=True)
class _Known:
    owner: str
    checked_at: float  # last read from the store
    refreshed_at: float  # last TTL restart in the store, by the owner's use


class SessionBindings:
    """Bindings in the shared state, with what this process last read kept near for a
    moment, so a burst of requests on one session costs one round trip."""

    def __init__(
        self, shared: SharedState, max_local: int = 50_000, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.shared = shared
        self._local: dict[str, _Known] = {}
        self._max_local = max_local
        self._clock = clock

    async def bind(
        self, upstream: str, session_id: str, principal: Principal, ttl_seconds: float
    ) -> BindOutcome:
        key = session_key(upstream, session_id)
        owner = owner_of(principal)
        # Read, then written: not atomic, but only two answers opening one id at the same
        # moment could both pass, and an upstream that hands one id out twice is broken.
        existing = await self.shared.get(key)
        if existing is not None and existing != owner:
            self._remember(key, existing, refreshed=False)
            return BindOutcome.CONFLICT
        await self.shared.put(key, owner, ttl_seconds)
        self._remember(key, owner, refreshed=True)
        return BindOutcome.BOUND

    async def verdict(
        self, upstream: str, session_id: str, principal: Principal, ttl_seconds: float
    ) -> SessionVerdict:
        key = session_key(upstream, session_id)
        owner = owner_of(principal)
        now = self._clock.monotonic()
        refresh_every = ttl_seconds * _REFRESH_FRACTION
        known = self._local.get(key)
        if (
            known is None
            or now - known.checked_at > min(_LOCAL_SECONDS, refresh_every)
            # A TTL restart is written only over a binding just read: written from memory,
            # it would bring back one that expired or was ended through another replica.
            or (known.owner == owner and now - known.refreshed_at > refresh_every)
        ):
            stored = await self.shared.get(key)
            if stored is None:
                self._local.pop(key, None)
                return SessionVerdict.UNKNOWN
            if known is None or known.owner != stored:
                known = self._remember(key, stored, refreshed=False)
            known.checked_at = now
        if known.owner != owner:
            # Never a TTL restart: a caller replaying the id must not keep it alive, nor
            # (by marking it fresh) keep its owner's use from restarting it.
            return SessionVerdict.FOREIGN
        if now - known.refreshed_at > refresh_every:
            await self.shared.put(key, owner, ttl_seconds)  # in use: the TTL restarts
            known.refreshed_at = now
        return SessionVerdict.OWNED

    async def end(self, upstream: str, session_id: str) -> None:
        key = session_key(upstream, session_id)
        self._local.pop(key, None)
        await self.shared.delete(key)

    def _remember(self, key: str, owner: str, *, refreshed: bool) -> _Known:
        if key not in self._local and len(self._local) >= self._max_local:
            self._local.pop(next(iter(self._local)))  # the oldest remembered
        now = self._clock.monotonic()
        # Not refreshed: a TTL restart is due on the owner's next use.
        known = _Known(owner, now, now if refreshed else float("-inf"))
        self._local[key] = known
        return known
