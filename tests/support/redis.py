"""Real Redis for the rate-limit tests: one server per module, one cluster per session.

Each test gets its Redis flushed first (``clean_redis`` / ``clean_cluster``), so tests
share the process without sharing buckets. A test that stops or pauses the shared server
leaves it as it found it: ``clean_redis`` brings it back if it did not.

``locked_redis`` asks for a password (``requirepass``), knows one ACL user and also listens
on a unix socket: the ways the store logs in to and reaches a server.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from policy_service.dev.redis_server import RedisCluster, RedisServer
from policy_service.ratelimits.redis_store import RedisSettings, RedisStore


def sync_client(url: str) -> redis.Redis:
    """A plain client for looking inside Redis (INFO, PTTL, KEYS); close it after use."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


# Characters a URL must escape, so a test that passes proves the store unquotes them.
REDIS_PASSWORD = "default:pw@with/odd%chars"
ACL_USER = "limiter"
ACL_PASSWORD = "acl-user-pw"


def flush(server: RedisServer) -> None:
    with sync_client(server.url) as client:
        client.flushall()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    with RedisCluster(size=3) as cluster:  # forming takes seconds: one per session
        yield cluster


@pytest.fixture
async def redis_store(clean_redis: RedisServer) -> AsyncIterator[RedisStore]:
    """The service's own Redis store on a clean server (the response side's shared state
    rides on it), closed after the test."""
    store = RedisStore(RedisSettings(clean_redis.url, timeout_seconds=0.5))
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> RedisServer:
    redis_server.resume()
    redis_server.start()  # no-op while it runs
    flush(redis_server)
    return redis_server


@pytest.fixture
def clean_cluster(redis_cluster: RedisCluster) -> RedisCluster:
    for node in redis_cluster.nodes:
        flush(node)
    return redis_cluster


@dataclass(frozen=True)
class LockedRedis:
    """A redis-server that asks for a password, knows one ACL user, and has a unix socket."""

    server: RedisServer
    socket_path: Path

    def url(self, password: str = REDIS_PASSWORD, username: str = "", db: int = 0) -> str:
        credentials = f"{quote(username, safe='')}:{quote(password, safe='')}@"
        return f"redis://{credentials}127.0.0.1:{self.server.port}/{db}"

    def admin(self, db: int = 0) -> redis.Redis:
        """A plain client, logged in; close it after use."""
        return redis.Redis(
            port=self.server.port, password=REDIS_PASSWORD, db=db, decode_responses=True
        )


@pytest.fixture(scope="module")
def locked_redis_server() -> Iterator[LockedRedis]:
    # A short directory: a unix socket path must fit in about a hundred bytes.
    with tempfile.TemporaryDirectory(prefix="redis-sock-") as directory:
        socket_path = Path(directory) / "redis.sock"
        args = ["--requirepass", REDIS_PASSWORD, "--unixsocket", str(socket_path)]
        args += ["--unixsocketperm", "700"]
        args += ["--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "+@all"]
        with RedisServer(extra_args=args) as server:
            yield LockedRedis(server, socket_path)


@pytest.fixture
def locked_redis(locked_redis_server: LockedRedis) -> LockedRedis:
    with locked_redis_server.admin() as client:
        client.flushall()
    return locked_redis_server
