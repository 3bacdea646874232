"""Buckets in Redis: one atomic script, one round trip per check.

Every bucket a check matches goes into one EVALSHA of ``token_bucket.lua``, so the take is
all-or-nothing and costs one round trip. Keys share one hash tag (``{policy-service}:…``)
so that single script call is legal on Redis Cluster, where a script may only touch keys
of one slot; the price is that all buckets of one key prefix live on one shard, which one
Redis node serves at well over the rate a gateway checks. Deployments that need more give
each gateway its own prefix.

A single Redis server is spoken to through our own client (``resp.py``) over one connection
per store: each check's EVALSHA is written at once and the replies, which Redis sends in
order, are handed to the checks in order, so concurrent checks share the connection and
many replies arrive in one read. It costs a fraction of redis-py's CPU per call
(bench/redis_client.py). A Redis Cluster goes through redis-py's cluster client (slot
routing, MOVED and ASK), with at most ``max_connections`` checks in flight.

With ``pipeline=True`` checks that arrive while a round trip is in flight are sent
together in the next one (one write, no added wait for the first), trading a little
latency under load for far fewer socket writes and wake-ups. Not on Redis Cluster, where
redis-py refuses scripts in pipelines.

Failures never hang a check: every call runs under ``timeout_seconds`` (connecting,
waiting for the connection and the reply included) and any failure is raised as
``StoreUnavailableError``, which the limiter counts towards its circuit breaker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from policy_service.otel.spans import phase_span
from policy_service.policy.limits import BucketReading, TakeResult
from policy_service.ratelimits.bucket import BucketSpec
from policy_service.ratelimits.redis_url import parse_redis_url
from policy_service.ratelimits.resp import (
    RespClient,
    RespConnectionError,
    RespReplyError,
    encode_command,
)
from policy_service.ratelimits.store import StoreUnavailableError

log = logging.getLogger("policy_service.ratelimits")

SCRIPT = files("policy_service.ratelimits").joinpath("token_bucket.lua").read_text()
# One queued script call: keys, arguments, and where its reply goes.
_Queued = tuple[list[str], list[str], "asyncio.Future[Any]"]

SCRIPT_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
_LOAD_SCRIPT = encode_command(("SCRIPT", "LOAD", SCRIPT))
# A caller's timeout leaves its reply to be dropped when it comes; this many timeouts later
# with no reply at all, the connection is taken for dead (half-open, hung) and reopened.
_STALE_AFTER_TIMEOUTS = 10
_STALE_AFTER_MIN_SECONDS = 1.0


@dataclass(frozen=True)
class RedisSettings:
    url: str  # redis://[user:password@]host:port/db, rediss:// or unix://; never logged
    cluster: bool = False
    timeout_seconds: float = 0.1
    max_connections: int = 64  # Cluster only: checks in flight at once, per process
    key_prefix: str = "policy-service"
    pipeline: bool = False


@dataclass
class RedisStoreStats:
    takes: int = 0  # checks that asked the store
    round_trips: int = 0  # requests written to Redis and answered (a pipeline counts once)
    script_loads: int = 0  # NOSCRIPT answers: Redis restarted or flushed its script cache


class RedisStore:
    name = "redis"

    def __init__(
        self,
        settings: RedisSettings,
        client: RespClient | aioredis.RedisCluster | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.settings = settings
        self._tracer = tracer or trace.get_tracer("policy_service")
        self._span_attributes = _span_attributes(settings)
        self.stats = RedisStoreStats()
        if client is None:
            client = _cluster_client(settings) if settings.cluster else _connect(settings)
        self._client = client
        # One of the two, by the client's kind: the code paths differ from here on.
        self._resp = client if isinstance(client, RespClient) else None
        self._cluster = None if isinstance(client, RespClient) else client
        self._tag = "{" + settings.key_prefix + "}:"
        self._queue: list[_Queued] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None  # held: the loop keeps weak refs
        # The cluster client has no blocking pool: past max_connections it raises
        # MaxConnectionsError at once. Checks wait here instead, within their timeout.
        self._slots = asyncio.Semaphore(settings.max_connections)
        # redis-py refuses EVALSHA in a cluster pipeline ("blocked when running redis in
        # cluster mode"), so on a cluster every check makes its own round trip.
        self._pipeline = settings.pipeline and self._resp is not None
        if settings.pipeline and self._resp is None:
            log.warning("Redis pipelining is not available on Redis Cluster; not pipelining")

    @property
    def client(self) -> RespClient | aioredis.RedisCluster:
        return self._client

    def redis_key(self, bucket: str) -> str:
        return self._tag + bucket

    async def take(self, specs: Sequence[BucketSpec]) -> TakeResult:
        if not trace.get_current_span().is_recording():
            # Most checks are not traced: no span, and not even phase_span's generator.
            return await self._take(specs)
        # A client span per traced take: in a trace, the Redis round trip (or the wait for
        # the pipelined batch it rides in) shows under the Check span.
        with phase_span(
            self._tracer, "EVALSHA", kind=SpanKind.CLIENT, attributes=self._span_attributes
        ) as span:
            try:
                return await self._take(specs)
            except StoreUnavailableError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.reason))
                span.set_attribute("error.type", exc.reason)
                raise

    async def _take(self, specs: Sequence[BucketSpec]) -> TakeResult:
        keys = [self.redis_key(spec.key) for spec in specs]
        args: list[str] = []
        for spec in specs:
            args += [repr(spec.rate_per_second), str(spec.burst), str(spec.cost)]
            args.append("1" if spec.enforced else "0")
        self.stats.takes += 1
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                if self._pipeline:
                    reply = await self._queued(keys, args)
                elif self._resp is not None:
                    reply = await self._evalsha(self._resp, keys, args)
                else:
                    async with self._slots:
                        reply = await self._cluster_evalsha(keys, args)
        except TimeoutError:
            raise StoreUnavailableError("timeout") from None
        except RespConnectionError as exc:
            # Our client's messages name the server's address and the cause, never the URL.
            raise StoreUnavailableError("connection", str(exc)) from None
        except redis.exceptions.ConnectionError as exc:
            raise StoreUnavailableError("connection", type(exc).__name__) from None
        except (RespReplyError, redis.exceptions.RedisError) as exc:
            # A server error (OOM, READONLY, NOAUTH, CLUSTERDOWN...): the first word is its kind.
            kind = str(exc).split(" ", 1)[0][:40] or type(exc).__name__
            raise StoreUnavailableError("error", kind) from None
        except redis.exceptions.RedisClusterException as exc:
            # Not a RedisError: raised by the cluster client itself, e.g. when no startup
            # node answers ("Redis Cluster cannot be connected").
            reason = "connection" if "cannot be connected" in str(exc) else "error"
            raise StoreUnavailableError(reason, type(exc).__name__) from None
        except (OSError, EOFError, ValueError) as exc:
            # Below the clients' own error mapping (a half-closed socket, a garbled reply): still
            # the store failing, so each limit's failure mode applies, not a 503 for all.
            raise StoreUnavailableError("error", type(exc).__name__) from None
        return _parse(reply, len(specs))

    async def _evalsha(self, client: RespClient, keys: list[str], args: list[str]) -> Any:
        self.stats.round_trips += 1
        command = _evalsha_command(keys, args)
        try:
            return await client.call(command)
        except RespReplyError as exc:
            if exc.kind != "NOSCRIPT":
                raise
        self.stats.script_loads += 1
        self.stats.round_trips += 2
        await client.call(_LOAD_SCRIPT)
        return await client.call(command)

    async def _cluster_evalsha(self, keys: list[str], args: list[str]) -> Any:
        assert self._cluster is not None
        self.stats.round_trips += 1
        try:
            return await self._cluster.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            pass
        self.stats.script_loads += 1
        self.stats.round_trips += 2
        await self._cluster.script_load(SCRIPT)
        return await self._cluster.evalsha(SCRIPT_SHA, len(keys), *keys, *args)

    async def _queued(self, keys: list[str], args: list[str]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, future))
        if not self._flushing:
            self._flushing = True
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._run_batch(batch)
        finally:
            self._flushing = False

    async def _run_batch(self, batch: list[_Queued], *, may_load: bool = True) -> None:
        assert self._resp is not None  # pipelining is for a single server only
        self.stats.round_trips += 1
        try:
            # Its own timeout: checks give up on theirs, but the loop must not wait forever
            # on a hung server while new checks queue up behind it.
            async with asyncio.timeout(self.settings.timeout_seconds):
                replies = await self._resp.call_many(
                    [_evalsha_command(keys, args) for keys, args, _ in batch]
                )
        except Exception as exc:  # the whole round trip failed: every waiter gets it
            _fail(batch, exc)
            return
        missing: list[_Queued] = []
        for (keys, args, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its check timed out meanwhile
                continue
            if isinstance(reply, RespReplyError):
                if may_load and reply.kind == "NOSCRIPT":
                    missing.append((keys, args, future))
                else:
                    future.set_exception(reply)
            else:
                future.set_result(reply)
        if missing:
            # Redis restarted or flushed its scripts: load once for the whole batch and send
            # its calls together again, not one load and two round trips per call.
            self.stats.script_loads += 1
            self.stats.round_trips += 1
            try:
                async with asyncio.timeout(self.settings.timeout_seconds):
                    await self._resp.call(_LOAD_SCRIPT)
            except Exception as exc:
                _fail(missing, exc)
                return
            await self._run_batch(missing, may_load=False)

    async def ping(self) -> bool:
        """Whether Redis answers now; why not is logged (never the URL)."""
        try:
            async with asyncio.timeout(self.settings.timeout_seconds * 10):
                if self._resp is not None:
                    reply = await self._resp.execute("PING")
                    return bool(reply == b"PONG")
                assert self._cluster is not None
                return bool(await self._cluster.ping())
        except TimeoutError:
            log.warning("Redis did not answer PING within %g s", self.settings.timeout_seconds * 10)
        except RespConnectionError as exc:
            log.warning("Redis did not answer PING: %s", exc)
        except (RespReplyError, redis.exceptions.RedisError) as exc:
            log.warning("Redis did not answer PING: %s", type(exc).__name__)
        return False

    async def aclose(self) -> None:
        await self._client.aclose()


def _evalsha_command(keys: list[str], args: list[str]) -> bytes:
    return encode_command(("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args))


def _span_attributes(settings: RedisSettings) -> dict[str, AttributeValue]:
    """OTel database conventions; never the URL itself, which may hold a password."""
    url = urlsplit(settings.url)
    attributes: dict[str, AttributeValue] = {
        "db.system.name": "redis",
        "db.operation.name": "EVALSHA",
    }
    if url.hostname:
        attributes["server.address"] = url.hostname
    if url.port:
        attributes["server.port"] = url.port
    return attributes


def _connect(settings: RedisSettings) -> RespClient:
    # No retries inside a call: the timeout is the budget, and the breaker, not a retry
    # loop, decides when to try again. A connect attempt gets the same budget as a call.
    return RespClient(
        parse_redis_url(settings.url),
        connect_timeout=settings.timeout_seconds,
        stale_after=max(_STALE_AFTER_MIN_SECONDS, _STALE_AFTER_TIMEOUTS * settings.timeout_seconds),
    )


def _cluster_client(settings: RedisSettings) -> aioredis.RedisCluster:
    return aioredis.RedisCluster.from_url(
        settings.url,
        max_connections=settings.max_connections,
        socket_timeout=settings.timeout_seconds,
        socket_connect_timeout=settings.timeout_seconds,
    )


def _fail(batch: Sequence[_Queued], exc: BaseException) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _parse(reply: Any, count: int) -> TakeResult:
    values = [int(value) for value in reply]
    if len(values) != 1 + 3 * count:
        raise StoreUnavailableError("error", "unexpected script reply")
    readings = tuple(
        BucketReading(values[1 + 3 * i], values[2 + 3 * i], values[3 + 3 * i]) for i in range(count)
    )
    return TakeResult(values[0] == 1, readings)
