"""The RESP client without a server: command encoding, and how one connection hands replies
to its callers (order, give-ups, error replies, batches, a lost or garbled stream).

A fake transport stands in for the socket; the same rules meet a real redis-server in
tests/integration/test_resp_client.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from policy_service.ratelimits.resp import (
    RespConnection,
    RespConnectionError,
    RespReplyError,
    encode_command,
)

ADDRESS = "127.0.0.1:6379"


class FakeTransport(asyncio.Transport):
    """Records writes; aborting it reports the loss to the protocol, as a socket's does."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)


def connected() -> tuple[RespConnection, FakeTransport]:
    connection = RespConnection(asyncio.get_running_loop(), ADDRESS)
    transport = FakeTransport(connection)
    connection.connection_made(transport)
    return connection, transport


# -- encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "encoded"),
    [
        (("PING",), b"*1\r\n$4\r\nPING\r\n"),
        (("ECHO", ""), b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"),
        (("SELECT", 3), b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"),
        (("INCRBY", "k", -12), b"*3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$3\r\n-12\r\n"),
        # Bulk strings are length-prefixed: CR LF inside a value is data, not a terminator.
        (("SET", "k", b"a\r\nb"), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n"),
        # Text goes as UTF-8 and its length counts bytes, not characters.
        (("ECHO", "é€"), b"*2\r\n$4\r\nECHO\r\n$5\r\n\xc3\xa9\xe2\x82\xac\r\n"),
    ],
)
def test_a_command_is_an_array_of_bulk_strings(parts: tuple[Any, ...], encoded: bytes) -> None:
    assert encode_command(parts) == encoded


def test_a_script_call_is_encoded_as_redis_reads_it() -> None:
    command = ("EVALSHA", "f" * 40, 2, "{p}:a", "{p}:b", "0.5", "10", "1", "1")
    encoded = encode_command(command)
    assert encoded.startswith(b"*9\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"f" * 40 + b"\r\n$1\r\n2\r\n")
    assert encoded.endswith(
        b"$5\r\n{p}:a\r\n$5\r\n{p}:b\r\n$3\r\n0.5\r\n$2\r\n10\r\n$1\r\n1\r\n$1\r\n1\r\n"
    )


def test_a_command_needs_a_name() -> None:
    with pytest.raises(ValueError, match="at least its name"):
        encode_command(())


# -- one connection's callers ------------------------------------------------------------------


async def test_replies_go_to_callers_in_the_order_they_asked() -> None:
    connection, transport = connected()
    first = connection.request(encode_command(("ECHO", "a")))
    second = connection.request(encode_command(("ECHO", "b")))
    assert transport.written == [encode_command(("ECHO", "a")), encode_command(("ECHO", "b"))]
    connection.data_received(b"$1\r\na\r\n$1\r\nb\r\n")  # two replies in one read
    assert (await first, await second) == (b"a", b"b")
    assert (connection.sent, connection.answered) == (2, 2)


async def test_a_reply_split_across_reads_is_delivered_once_complete() -> None:
    connection, _ = connected()
    future = connection.request(encode_command(("GET", "k")))
    connection.data_received(b"$5\r\nhel")
    assert not future.done()
    connection.data_received(b"lo\r\n:7")
    assert await future == b"hello"
    later = connection.request(encode_command(("INCR", "n")))
    connection.data_received(b"\r\n")  # the rest of a reply that had already begun
    assert await later == 7


async def test_a_caller_that_gave_up_keeps_its_place_and_its_reply_is_dropped() -> None:
    connection, _ = connected()
    gave_up = connection.request(encode_command(("ECHO", "late")))
    waiting = connection.request(encode_command(("ECHO", "mine")))
    gave_up.cancel()  # what its caller's timeout does
    connection.data_received(b"$4\r\nlate\r\n")
    assert not waiting.done()  # the late reply was not handed on
    connection.data_received(b"$4\r\nmine\r\n")
    assert await waiting == b"mine"
    assert connection.answered == 2


async def test_an_error_reply_is_raised_with_its_kind() -> None:
    connection, _ = connected()
    failing = connection.request(encode_command(("EVALSHA", "0" * 40, 0)))
    fine = connection.request(encode_command(("PING",)))
    connection.data_received(b"-NOSCRIPT No matching script. Please use EVAL.\r\n+PONG\r\n")
    with pytest.raises(RespReplyError, match="No matching script") as raised:
        await failing
    assert raised.value.kind == "NOSCRIPT"
    assert await fine == b"PONG"


async def test_a_batch_gets_its_replies_in_order_with_errors_in_their_place() -> None:
    connection, transport = connected()
    before = connection.request(encode_command(("PING",)))
    commands = [
        encode_command(("INCR", "n")),
        encode_command(("GET", "h")),
        b"*1\r\n$4\r\nPING\r\n",
    ]
    batch = connection.request_batch(b"".join(commands), len(commands))
    after = connection.request(encode_command(("ECHO", "x")))
    assert transport.written[1] == b"".join(commands)  # one write for the batch
    connection.data_received(b"+PONG\r\n:1\r\n-WRONGTYPE Operation against a key\r\n")
    assert await before == b"PONG"
    assert not batch.done()  # one reply short
    connection.data_received(b"+PONG\r\n$1\r\nx\r\n")
    first, second, third = await batch
    assert (first, third) == (1, b"PONG")
    assert isinstance(second, RespReplyError)
    assert second.kind == "WRONGTYPE"
    assert await after == b"x"


async def test_a_batch_given_up_on_still_consumes_all_its_replies() -> None:
    connection, _ = connected()
    batch = connection.request_batch(b"".join([encode_command(("PING",))] * 3), 3)
    waiting = connection.request(encode_command(("ECHO", "mine")))
    batch.cancel()
    connection.data_received(b"+PONG\r\n+PONG\r\n+PONG\r\n$4\r\nmine\r\n")
    assert await waiting == b"mine"


async def test_a_lost_connection_fails_every_waiting_caller_at_once() -> None:
    connection, _ = connected()
    single = connection.request(encode_command(("PING",)))
    batch = connection.request_batch(encode_command(("PING",)) * 2, 2)
    gave_up = connection.request(encode_command(("PING",)))
    gave_up.cancel()
    connection.connection_lost(ConnectionResetError("reset by peer"))
    for future in (single, batch):
        with pytest.raises(RespConnectionError, match=f"connection to {ADDRESS} lost: reset"):
            await future
    assert connection.lost is not None
    assert connection.closed.done()


async def test_the_server_closing_marks_the_connection_lost_before_the_transport_says_so() -> None:
    connection, _ = connected()
    future = connection.request(encode_command(("PING",)))
    assert connection.eof_received() is False  # let the transport close itself
    assert connection.lost is not None
    with pytest.raises(RespConnectionError, match=f"connection to {ADDRESS} closed by the server"):
        await future


async def test_a_garbled_stream_drops_the_connection_and_fails_its_callers() -> None:
    connection, transport = connected()
    future = connection.request(encode_command(("PING",)))
    connection.data_received(b"?what is this\r\n")
    with pytest.raises(RespConnectionError, match="unreadable reply"):
        await future
    assert transport.aborted
    await connection.closed


async def test_a_reply_nobody_asked_for_drops_the_connection() -> None:
    connection, transport = connected()
    connection.data_received(b"+OK\r\n")
    assert transport.aborted
    assert connection.lost is not None
    assert "unexpected reply" in str(connection.lost)


async def test_a_connection_whose_overdue_reply_never_came_is_dropped() -> None:
    connection, transport = connected()
    connection.request(encode_command(("PING",))).cancel()
    connection.request(encode_command(("PING",))).cancel()
    connection.data_received(b"+PONG\r\n")
    connection.check_answered(1, 1.0)  # reply 1 came: a slow server, not a dead one
    assert not transport.aborted
    waiting = connection.request(encode_command(("PING",)))
    connection.check_answered(2, 1.0)  # reply 2 never came
    assert transport.aborted
    with pytest.raises(RespConnectionError, match=f"no reply from {ADDRESS} within 1 s"):
        await waiting
