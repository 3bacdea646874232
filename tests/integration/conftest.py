"""Fixtures shared by the integration tests (real Redis: see tests/support/redis.py)."""

from __future__ import annotations

from tests.support.redis import (
    clean_cluster,
    clean_redis,
    locked_redis,
    locked_redis_server,
    redis_cluster,
    redis_server,
)

__all__ = [
    "clean_cluster",
    "clean_redis",
    "locked_redis",
    "locked_redis_server",
    "redis_cluster",
    "redis_server",
]
