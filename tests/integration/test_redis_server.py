"""The real redis-server helpers behave as the Redis-backed tests and the benchmark assume.

Outage tests rely on ``restart`` keeping the port, ``pause`` making Redis silent rather than
absent, and ``stop`` making it absent; the cluster must be fully formed before it is handed
out. Each of those is checked here against a real redis-server, through redis-py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from policy_service.dev.redis_server import (
    CLUSTER_SLOTS,
    REDIS_ENV_VAR,
    RedisCluster,
    RedisNotFoundError,
    RedisServer,
    RedisServerError,
    find_redis_server,
)


def _client(server: RedisServer, socket_timeout: float = 5.0) -> redis.Redis:
    # No retries: an outage must surface as the first error, not after backoff rounds.
    return redis.Redis.from_url(
        server.url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
    )


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as running:
        yield running


def test_find_redis_server_returns_an_executable() -> None:
    assert os.access(find_redis_server(), os.X_OK)


def test_an_explicit_binary_that_is_not_executable_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_executable = tmp_path / "redis-server"
    not_executable.write_text("")
    monkeypatch.setenv(REDIS_ENV_VAR, str(not_executable))
    with pytest.raises(RedisNotFoundError, match=REDIS_ENV_VAR):
        find_redis_server()


def test_a_server_that_cannot_start_raises_with_its_log() -> None:
    broken = RedisServer(extra_args=["--no-such-directive", "yes"])
    with pytest.raises(RedisServerError, match="no-such-directive"):
        broken.start()
    assert not broken.is_running


def test_set_and_get_through_the_sync_client(server: RedisServer) -> None:
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = _client(server)
    try:
        assert client.set("greeting", "hello")
        assert client.get("greeting") == "hello"
        assert client.config_get("save") == {"save": ""}  # nothing is ever written to disk
    finally:
        client.close()


async def test_set_and_get_through_the_async_client(server: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
    try:
        assert await client.set("greeting", "hello")
        assert await client.get("greeting") == "hello"
    finally:
        await client.aclose()


def test_restart_keeps_the_port_and_answers_again(server: RedisServer) -> None:
    port = server.port
    client = _client(server)
    try:
        client.set("k", "v")
        server.restart()
        assert server.port == port
        assert server.is_running
        assert client.ping()  # the pool reconnects to the new process on the same port
        assert client.get("k") is None  # no persistence: the outage lost the data
    finally:
        client.close()


def test_pause_makes_the_server_silent_and_resume_brings_it_back(server: RedisServer) -> None:
    client = _client(server, socket_timeout=0.3)
    try:
        assert client.ping()
        server.pause()
        assert server.is_running
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()
        server.resume()
        assert client.ping()
    finally:
        client.close()


def test_stop_makes_connections_fail_and_is_idempotent(server: RedisServer) -> None:
    client = _client(server)
    try:
        assert client.ping()
        server.stop()
        server.stop()
        assert not server.is_running
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
    finally:
        client.close()


def test_a_paused_server_still_stops() -> None:
    paused = RedisServer().start()
    paused.pause()
    paused.stop()
    assert not paused.is_running


async def test_cluster_spreads_keys_over_every_node(cluster: RedisCluster) -> None:
    client = redis.asyncio.RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        keys = [chr(ord("a") + index) for index in range(20)]
        for key in keys:
            assert await client.set(key, f"value-{key}")
        for key in keys:
            assert await client.get(key) == f"value-{key}"
        owners = [client.get_node_from_key(key) for key in keys]
        ports = {owner.port for owner in owners if owner is not None}
        assert None not in owners
        assert ports == {port for _, port in cluster.startup_nodes}  # every node holds some
    finally:
        await client.aclose()


def test_cluster_info_says_ok_and_three_masters_own_slots(cluster: RedisCluster) -> None:
    for node in cluster.nodes:
        client = _client(node)
        try:
            info = client.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_slots_ok"]) == CLUSTER_SLOTS
            assert int(info["cluster_size"]) == 3  # masters serving at least one slot
            nodes = client.cluster("NODES")
        finally:
            client.close()
        masters = {address: seen for address, seen in nodes.items() if "master" in seen["flags"]}
        assert set(masters) == {f"{host}:{port}" for host, port in cluster.startup_nodes}
        assert all(seen["slots"] for seen in masters.values())


async def test_a_lua_script_runs_on_keys_sharing_a_hash_tag(cluster: RedisCluster) -> None:
    client = redis.asyncio.RedisCluster(
        startup_nodes=[
            redis.asyncio.cluster.ClusterNode(host, port) for host, port in cluster.startup_nodes
        ],
        decode_responses=True,
    )
    try:
        swap = client.register_script(
            "local x = redis.call('GET', KEYS[1]) "
            "redis.call('SET', KEYS[1], redis.call('GET', KEYS[2])) "
            "redis.call('SET', KEYS[2], x) "
            "return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}"
        )
        await client.set("{t}:x", "one")
        await client.set("{t}:y", "two")
        assert await swap(keys=["{t}:x", "{t}:y"]) == ["two", "one"]
    finally:
        await client.aclose()
