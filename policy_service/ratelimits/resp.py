"""A small asyncio Redis client: one pipelined RESP2 connection, replies parsed by hiredis.

The Redis store asks one thing of Redis per check (an EVALSHA), and redis-py's asyncio
client spent more CPU on that than anything else on the request path: its connection pool,
its command machinery and one socket write and one wake-up per call. This client does only
what the store needs (bench/redis_client.py measures both):

* One connection, opened on first use. While it is being opened every caller waits for the
  same attempt, each within its own timeout, so a Redis restart costs one reconnect, not one
  per check in flight.
* A command is written the moment it is issued and its future joins a FIFO queue. Redis
  answers a connection's commands in order, so the next reply read belongs to the oldest
  queued future; many replies usually arrive in one read.
* A caller that gives up (its timeout cancels it) keeps its place in the queue: its reply is
  read and dropped when it comes, never handed to the next caller. If that reply has not
  come ``stale_after`` seconds later, the connection is taken for dead (a half-open TCP
  connection, a hung server) and dropped, and the next call opens a new one.
* Losing the connection fails every queued caller at once with ``RespConnectionError``.
  An error reply raises ``RespReplyError`` (in a batch, it takes its command's place).

    RespError
    ├── RespConnectionError   cannot connect or log in; the connection was lost or closed
    └── RespReplyError        Redis answered with an error; ``kind`` is its first word

Messages name the server's address, never the URL: it may hold a password.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis

from policy_service.ratelimits.redis_url import RedisEndpoint

Part = str | int | float | bytes
# hiredis's stub types pack_command's argument as a 1-tuple; it takes any length.
_pack_command = cast("Callable[[tuple[Part, ...]], bytes]", hiredis.pack_command)


class RespError(Exception):
    """Base of this client's errors."""


class RespConnectionError(RespError):
    """No usable connection: refused, timed out while connecting, login refused, lost."""


class RespReplyError(RespError):
    """Redis answered with an error reply, e.g. ``NOSCRIPT No matching script``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.kind = message.split(" ", 1)[0]  # NOSCRIPT, ERR, WRONGTYPE, OOM, READONLY...


def encode_command(parts: tuple[Part, ...]) -> bytes:
    """One command as RESP2 sends it: an array of bulk strings (text as UTF-8, numbers as
    Redis parses them). hiredis packs it in C, a few times faster than doing it here."""
    if not parts:
        raise ValueError("a Redis command needs at least its name")
    return _pack_command(parts)


class _Batch:
    """A pipelined batch's one place in the reply queue: its replies, collected in order."""

    __slots__ = ("future", "replies", "size")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future = future
        self.replies: list[Any] = []
        self.size = size


class RespConnection(asyncio.Protocol):
    """One socket to Redis and the callers waiting on it, oldest first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, address: str) -> None:
        self._loop = loop
        self._address = address
        # Error replies come back as RespReplyError values, made by hiredis itself.
        self._reader = hiredis.Reader(replyError=RespReplyError)
        self._waiters: deque[asyncio.Future[Any] | _Batch] = deque()
        self._transport: asyncio.Transport | None = None
        self.sent = 0  # commands written
        self.answered = 0  # replies read, dropped ones included
        self.lost: RespConnectionError | None = None  # why it is unusable, once it is
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)

    def request(self, command: bytes) -> asyncio.Future[Any]:
        assert self._transport is not None  # only connected connections are handed out
        future = self._loop.create_future()
        self._waiters.append(future)
        self.sent += 1
        self._transport.write(command)
        return future

    def request_batch(self, commands: bytes, count: int) -> asyncio.Future[list[Any]]:
        """``count`` commands already encoded back to back; their replies come as one list."""
        assert self._transport is not None
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._waiters.append(_Batch(future, count))
        self.sent += count
        self._transport.write(commands)
        return future

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abandon(RespConnectionError(f"unreadable reply from {self._address}: {exc}"))
                return
            if reply is False:  # hiredis: no complete reply buffered yet
                return
            if not waiters:
                # RESP2 never speaks unasked: the stream is not what we think it is.
                self.abandon(RespConnectionError(f"unexpected reply from {self._address}"))
                return
            self.answered += 1
            waiter = waiters[0]
            if type(waiter) is _Batch:
                waiter.replies.append(reply)
                if len(waiter.replies) < waiter.size:
                    continue
                waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_result(waiter.replies)
                continue
            waiters.popleft()
            future = cast("asyncio.Future[Any]", waiter)
            if future.done():  # its caller gave up: the reply is dropped, the order kept
                continue
            if type(reply) is RespReplyError:
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def eof_received(self) -> bool:
        # Marked lost now, not when the transport reports the close a loop turn later, so
        # no command is written meanwhile into a socket that can no longer answer it.
        self._fail(RespConnectionError(f"connection to {self._address} closed by the server"))
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        because = f": {exc}" if exc is not None else ""
        self._fail(RespConnectionError(f"connection to {self._address} lost{because}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def abandon(self, error: RespConnectionError) -> None:
        """Fail every waiting caller now and drop the socket without flushing it."""
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()
        elif not self.closed.done():
            self.closed.set_result(None)

    def check_answered(self, needed: int, waited: float) -> None:
        """Called ``waited`` s after a caller gave up on reply number ``needed``."""
        if self.lost is None and self.answered < needed:
            self.abandon(RespConnectionError(f"no reply from {self._address} within {waited:g} s"))

    def _fail(self, error: RespConnectionError) -> None:
        if self.lost is None:
            self.lost = error
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            future = waiter.future if isinstance(waiter, _Batch) else waiter
            if not future.done():
                future.set_exception(error)


class RespClient:
    """Commands to one Redis over one connection; see the module docstring for the rules."""

    def __init__(
        self, endpoint: RedisEndpoint, *, connect_timeout: float, stale_after: float
    ) -> None:
        self.endpoint = endpoint
        self._connect_timeout = connect_timeout
        self._stale_after = stale_after
        self._handshake = [encode_command(command) for command in endpoint.handshake()]
        self._handshake_names = [str(command[0]) for command in endpoint.handshake()]
        self._connection: RespConnection | None = None
        self._connecting: asyncio.Task[RespConnection] | None = None
        self._closed = False

    async def execute(self, *parts: Part) -> Any:
        return await self.call(encode_command(parts))

    async def call(self, command: bytes) -> Any:
        """Send one encoded command; return its reply or raise ``RespError``."""
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect()
        future = connection.request(command)
        needed = connection.sent
        try:
            return await future
        except asyncio.CancelledError:
            self._watch(connection, needed)
            raise

    async def call_many(self, commands: Sequence[bytes]) -> list[Any]:
        """Send encoded commands in one write; their replies in order, an error reply as a
        ``RespReplyError`` in its place. A lost connection raises for the whole batch."""
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect()
        future = connection.request_batch(b"".join(commands), len(commands))
        needed = connection.sent
        try:
            return await future
        except asyncio.CancelledError:
            self._watch(connection, needed)
            raise

    async def aclose(self) -> None:
        """Drop the connection; waiting callers fail, later calls raise. Idempotent."""
        self._closed = True
        connecting = self._connecting
        if connecting is not None:
            connecting.cancel()
            await asyncio.wait({connecting})
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abandon(RespConnectionError("client closed"))
            await connection.closed

    def _watch(self, connection: RespConnection, needed: int) -> None:
        # Only on a timeout, so a timer per give-up is cheap; each checks its own reply.
        asyncio.get_running_loop().call_later(
            self._stale_after, connection.check_answered, needed, self._stale_after
        )

    async def _connect(self) -> RespConnection:
        if self._closed:
            raise RespConnectionError("client closed")
        task = self._connecting
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(self._opened)
            self._connecting = task
        # Shielded: a caller whose timeout ends leaves the attempt running for the others.
        return await asyncio.shield(task)

    def _opened(self, task: asyncio.Task[RespConnection]) -> None:
        self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return  # each waiter has the error; the next call tries again
        connection = task.result()
        if self._closed:
            connection.abandon(RespConnectionError("client closed"))
        else:
            self._connection = connection

    async def _open(self) -> RespConnection:
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        connection = RespConnection(loop, endpoint.address)
        try:
            async with asyncio.timeout(self._connect_timeout):
                if endpoint.unix_path is not None:
                    await loop.create_unix_connection(lambda: connection, endpoint.unix_path)
                else:
                    await loop.create_connection(
                        lambda: connection, endpoint.host, endpoint.port, ssl=endpoint.tls
                    )
                if self._handshake:
                    count = len(self._handshake)
                    replies = await connection.request_batch(b"".join(self._handshake), count)
                    for name, reply in zip(self._handshake_names, replies, strict=True):
                        if isinstance(reply, RespReplyError):
                            # Redis's refusal never repeats the password it was given.
                            raise RespConnectionError(
                                f"{name} refused by {endpoint.address}: {reply}"
                            )
        except BaseException as exc:
            connection.abandon(RespConnectionError("connect attempt abandoned"))
            if isinstance(exc, TimeoutError):
                raise RespConnectionError(
                    f"no answer from {endpoint.address} within {self._connect_timeout:g} s "
                    "of connecting"
                ) from None
            if isinstance(exc, OSError):  # refused, unreachable, TLS verification...
                raise RespConnectionError(f"cannot connect to {endpoint.address}: {exc}") from None
            raise
        return connection
