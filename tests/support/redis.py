"""Real Redis for the rate-limit tests: one server per module, one cluster per session.

Each test gets its Redis flushed first (``clean_redis`` / ``clean_cluster``), so tests
share the process without sharing buckets. A test that stops or pauses the shared server
leaves it as it found it: ``clean_redis`` brings it back if it did not.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from policy_service.dev.redis_server import RedisCluster, RedisServer


def sync_client(url: str) -> redis.Redis:
    """A plain client for looking inside Redis (INFO, PTTL, KEYS); close it after use."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


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
