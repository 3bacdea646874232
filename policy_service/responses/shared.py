"""State every replica must agree on: session bindings and observed tool definitions.

In Redis when the service has one (the rate limits' Redis, under the same key prefix), so
a binding made behind one replica holds behind all of them; in process otherwise, which is
right for one process and documented as such for several. Keys hold hashes, never a
session id or a principal's name in clear.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from policy_service.clock import SYSTEM_CLOCK, Clock
from policy_service.errors import PolicyServiceError
from policy_service.ratelimits.redis_store import RedisStore
from policy_service.ratelimits.resp import RespClient, RespError

_TIMEOUT_SECONDS = 0.5
_MAX_IN_PROCESS_KEYS = 200_000


class SharedStateUnavailableError(PolicyServiceError):
    """The shared store did not answer; the caller fails closed."""


class SharedState(Protocol):
    name: str

    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, value: str, ttl_seconds: float) -> None: ...

    async def delete(self, key: str) -> None: ...


class InProcessState:
    """A dict with expiry, bounded: past the bound the entries nearest expiry go first."""

    name = "in_process"

    def __init__(self, max_keys: int = _MAX_IN_PROCESS_KEYS, clock: Clock = SYSTEM_CLOCK) -> None:
        self._entries: dict[str, tuple[str, float]] = {}
        self._max_keys = max_keys
        self._clock = clock

    async def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= self._clock.monotonic():
            del self._entries[key]
            return None
        return value

    async def put(self, key: str, value: str, ttl_seconds: float) -> None:
        if len(self._entries) >= self._max_keys and key not in self._entries:
            soonest = min(self._entries, key=lambda name: self._entries[name][1])
            del self._entries[soonest]
        self._entries[key] = (value, self._clock.monotonic() + ttl_seconds)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)


class RedisState:
    """The rate limits' Redis, under their key prefix (one hash tag, as their keys)."""

    name = "redis"

    def __init__(self, store: RedisStore) -> None:
        self._client = store.client
        self._prefix = store.redis_key("state:")

    async def get(self, key: str) -> str | None:
        reply = await self._run("GET", self._prefix + key)
        if isinstance(reply, bytes):
            return reply.decode()
        return reply if isinstance(reply, str) else None

    async def put(self, key: str, value: str, ttl_seconds: float) -> None:
        milliseconds = max(1, int(ttl_seconds * 1000))
        await self._run("SET", self._prefix + key, value, "PX", str(milliseconds))

    async def delete(self, key: str) -> None:
        await self._run("DEL", self._prefix + key)

    async def _run(self, *parts: str) -> object:
        client = self._client
        try:
            async with asyncio.timeout(_TIMEOUT_SECONDS):
                if isinstance(client, RespClient):
                    return await client.execute(*parts)
                return await client.execute_command(*parts)
        except (RespError, OSError, TimeoutError) as exc:
            raise SharedStateUnavailableError(f"Redis: {type(exc).__name__}") from None
        except Exception as exc:  # redis-py's cluster errors
            raise SharedStateUnavailableError(f"Redis: {type(exc).__name__}") from None
