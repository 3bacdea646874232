"""The RESP client against a real redis-server, on asyncio's own loop and on uvloop (what
``serve`` runs on): one connection shared by concurrent callers, give-ups that never shift
a reply, a lost connection failing its callers at once and reopened once, logging in,
selecting a database, unix sockets and TLS.

Each test runs its scenario on a loop it makes (``run``), so both loops see every rule.
Blocking commands make the order deterministic: a BLPOP that waits on a list holds every
later command of the same connection behind it until the test pushes to that list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import uvloop

from policy_service.dev.redis_server import RedisServer
from policy_service.ratelimits.redis_url import parse_redis_url
from policy_service.ratelimits.resp import RespClient, RespConnectionError, RespReplyError
from tests.support.envoy import free_port
from tests.support.redis import (
    ACL_PASSWORD,
    ACL_USER,
    REDIS_PASSWORD,
    LockedRedis,
    sync_client,
)
from tests.support.tls_proxy import tls_proxy

Run = Callable[[Coroutine[Any, Any, None]], None]
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
FAST_SECONDS = 1.0  # "at once": far below any timeout here, never a speed test


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    factory = LOOPS[request.param]

    def run(scenario: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(scenario)

    return run


def client_for(url: str, *, connect_timeout: float = 5.0, stale_after: float = 60.0) -> RespClient:
    return RespClient(
        parse_redis_url(url), connect_timeout=connect_timeout, stale_after=stale_after
    )


def connections_made(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_connections_received"])


async def until_written(task: asyncio.Task[Any]) -> None:
    """Let a just-created call run up to its write (it has no other await once connected)."""
    await asyncio.sleep(0)
    assert not task.done()


def test_concurrent_callers_share_one_connection_and_each_gets_its_own_reply(
    run: Run, clean_redis: RedisServer
) -> None:
    async def scenario() -> None:
        client = client_for(clean_redis.url)
        try:
            with sync_client(clean_redis.url) as admin:
                before = connections_made(admin)
                # All at once on a client that has not connected yet: one connect attempt.
                values = [f"caller-{index}" for index in range(500)]
                replies = await asyncio.gather(*(client.execute("ECHO", v) for v in values))
                assert replies == [value.encode() for value in values]
                assert connections_made(admin) - before == 1
        finally:
            await client.aclose()

    run(scenario())


def test_a_caller_that_gave_up_never_receives_the_next_callers_reply(
    run: Run, clean_redis: RedisServer
) -> None:
    async def scenario() -> None:
        client = client_for(clean_redis.url)
        try:
            with sync_client(clean_redis.url) as admin:
                assert await client.execute("PING") == b"PONG"
                before = connections_made(admin)
                gate = asyncio.create_task(client.execute("BLPOP", "gate", 0))
                await until_written(gate)
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await client.execute("ECHO", "late")
                mine = asyncio.create_task(client.execute("ECHO", "mine"))
                await until_written(mine)
                admin.lpush("gate", "open")  # Redis now answers BLPOP, "late", then "mine"
                assert await gate == [b"gate", b"open"]
                assert await mine == b"mine"
                assert await client.execute("ECHO", "after") == b"after"
                assert connections_made(admin) == before  # kept, not reopened to resync
        finally:
            await client.aclose()

    run(scenario())


def test_a_lost_connection_fails_every_waiting_caller_at_once_and_is_reopened(
    run: Run, clean_redis: RedisServer
) -> None:
    async def scenario() -> None:
        client = client_for(clean_redis.url)
        try:
            with sync_client(clean_redis.url) as admin:
                assert await client.execute("PING") == b"PONG"
                before = connections_made(admin)
                gate = asyncio.create_task(client.execute("BLPOP", "gate", 0))
                waiting = [asyncio.create_task(client.execute("ECHO", str(n))) for n in range(10)]
                await until_written(gate)
                started = time.monotonic()
                admin.client_kill_filter(_type="normal", skipme=True)  # ours, not admin's
                results = await asyncio.gather(gate, *waiting, return_exceptions=True)
                assert time.monotonic() - started < FAST_SECONDS
                assert all(isinstance(result, RespConnectionError) for result in results)
                assert "127.0.0.1" in str(results[0])  # "closed by the server" or "lost: ..."
                replies = await asyncio.gather(*(client.execute("ECHO", "x") for _ in range(20)))
                assert replies == [b"x"] * 20
                assert connections_made(admin) - before == 1
        finally:
            await client.aclose()

    run(scenario())


def test_a_restarted_server_is_reconnected_to_once_without_failing_a_call(
    run: Run, clean_redis: RedisServer
) -> None:
    async def scenario() -> None:
        client = client_for(clean_redis.url)
        try:
            assert await client.execute("PING") == b"PONG"
            # In a thread, so the loop sees the old connection close, as it would in service.
            await asyncio.to_thread(clean_redis.restart)
            replies = await asyncio.gather(*(client.execute("ECHO", "x") for _ in range(50)))
            assert replies == [b"x"] * 50
            with sync_client(clean_redis.url) as admin:
                assert admin.info("clients")["connected_clients"] == 2  # ours and admin's
        finally:
            await client.aclose()

    run(scenario())


def test_a_connection_whose_reply_is_long_overdue_is_dropped_and_reopened(
    run: Run, clean_redis: RedisServer
) -> None:
    async def scenario() -> None:
        client = client_for(clean_redis.url, stale_after=0.3)
        try:
            assert await client.execute("PING") == b"PONG"
            clean_redis.pause()  # a hung server: the socket stays open, nothing answers
            try:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await client.execute("PING")
                behind = asyncio.create_task(client.execute("ECHO", "behind"))
                with pytest.raises(RespConnectionError, match=r"no reply from .* within 0.3 s"):
                    await asyncio.wait_for(behind, 10)
            finally:
                clean_redis.resume()
            assert await client.execute("ECHO", "back") == b"back"
        finally:
            await client.aclose()

    run(scenario())


def test_connecting_to_nothing_fails_fast_and_names_only_the_address(run: Run) -> None:
    port = free_port()

    async def scenario() -> None:
        client = client_for(f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:{port}")
        try:
            for _ in range(3):  # each call tries again, and fails as fast
                started = time.monotonic()
                with pytest.raises(RespConnectionError) as raised:
                    await client.execute("PING")
                assert time.monotonic() - started < FAST_SECONDS
                assert str(raised.value).startswith(f"cannot connect to 127.0.0.1:{port}: ")
                assert "pw" not in str(raised.value)
        finally:
            await client.aclose()

    run(scenario())


def test_a_server_that_never_answers_the_login_times_the_connect_out(run: Run) -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # accept, read, never answer
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = client_for(f"redis://:secret@127.0.0.1:{port}", connect_timeout=0.2)
        try:
            started = time.monotonic()
            with pytest.raises(RespConnectionError, match=r"no answer from .* within 0.2 s"):
                await client.execute("PING")
            assert time.monotonic() - started < FAST_SECONDS + 0.2
        finally:
            await client.aclose()
            server.close()

    run(scenario())


@pytest.mark.parametrize("login", ["password", "acl-user"])
def test_the_credentials_in_the_url_log_in(run: Run, locked_redis: LockedRedis, login: str) -> None:
    url = locked_redis.url() if login == "password" else locked_redis.url(ACL_PASSWORD, ACL_USER)

    async def scenario() -> None:
        client = client_for(url)
        try:
            assert await client.execute("SET", "k", "v") == b"OK"
            expected = b"default" if login == "password" else ACL_USER.encode()
            assert await client.execute("ACL", "WHOAMI") == expected
        finally:
            await client.aclose()

    run(scenario())


def test_a_wrong_password_is_refused_clearly_without_repeating_it(
    run: Run, locked_redis: LockedRedis
) -> None:
    wrong = "not-the-Password-42"

    async def scenario() -> None:
        client = client_for(locked_redis.url(wrong))
        try:
            with pytest.raises(RespConnectionError) as raised:
                await client.execute("PING")
            message = str(raised.value)
            port = locked_redis.server.port
            assert message.startswith(f"AUTH refused by 127.0.0.1:{port}: WRONGPASS"), message
            assert wrong not in message
        finally:
            await client.aclose()

    run(scenario())


def test_without_a_password_every_command_is_refused(run: Run, locked_redis: LockedRedis) -> None:
    async def scenario() -> None:
        client = client_for(f"redis://127.0.0.1:{locked_redis.server.port}/0")
        try:
            with pytest.raises(RespReplyError) as raised:
                await client.execute("PING")
            assert raised.value.kind == "NOAUTH"
        finally:
            await client.aclose()

    run(scenario())


@pytest.mark.parametrize("form", ["path", "query"])
def test_the_database_in_the_url_is_selected_on_every_connection(
    run: Run, clean_redis: RedisServer, form: str
) -> None:
    base = f"redis://127.0.0.1:{clean_redis.port}"
    url = f"{base}/3" if form == "path" else f"{base}/?db=3"

    async def scenario() -> None:
        client = client_for(url)
        try:
            with sync_client(f"{base}/3") as db3, sync_client(f"{base}/0") as db0:
                assert await client.execute("SET", "first", "1") == b"OK"
                db0.client_kill_filter(_type="normal", skipme=True)
                await asyncio.sleep(0.05)  # the loop sees the loss
                assert await client.execute("SET", "second", "2") == b"OK"  # reconnected
                assert sorted(db3.keys()) == ["first", "second"]
                assert db0.keys() == []
        finally:
            await client.aclose()

    run(scenario())


def test_a_unix_socket_url_with_a_database_and_a_password(
    run: Run, locked_redis: LockedRedis
) -> None:
    url = f"unix://{locked_redis.socket_path}?db=2&password={quote(REDIS_PASSWORD, safe='')}"

    async def scenario() -> None:
        client = client_for(url)
        try:
            assert await client.execute("SET", "over-unix", "1") == b"OK"
        finally:
            await client.aclose()
        with locked_redis.admin(db=2) as admin:
            assert admin.get("over-unix") == "1"

    run(scenario())


def test_rediss_verifies_the_server_certificate(
    run: Run, clean_redis: RedisServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with tls_proxy(clean_redis.port, tmp_path) as (port, cert):
            trusting = client_for(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}")
            default = client_for(f"rediss://127.0.0.1:{port}/0")
            unverified = client_for(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none")
            try:
                assert await trusting.execute("ECHO", "sealed") == b"sealed"
                with pytest.raises(RespConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                    await default.execute("PING")
                assert await unverified.execute("PING") == b"PONG"  # only when asked for
            finally:
                for client in (trusting, default, unverified):
                    await client.aclose()

    run(scenario())


def test_closing_fails_waiting_callers_and_refuses_later_calls(
    run: Run, clean_redis: RedisServer
) -> None:
    async def scenario() -> None:
        client = client_for(clean_redis.url)
        assert await client.execute("PING") == b"PONG"
        gate = asyncio.create_task(client.execute("BLPOP", "gate", 0))
        await until_written(gate)
        await client.aclose()
        with pytest.raises(RespConnectionError, match="client closed"):
            await gate
        with pytest.raises(RespConnectionError, match="client closed"):
            await client.execute("PING")
        await client.aclose()  # twice is fine

    run(scenario())
