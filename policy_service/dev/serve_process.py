"""The dev stack's policy service as ``policy-service serve --workers N``, a child process.

One process is served in the dev process itself; several need the supervisor, which only
``serve`` runs. The child gets the stack's bundle, ports, audit log and Redis, and the
environment (OTEL_* included); its log lines go to the dev stack's terminal. The dev bundle
has rate limits, which N workers must keep in Redis: without a Redis URL the stack starts
a redis-server of its own (``redis_server``) for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from policy_service.dev.redis_server import RedisServer
from policy_service.errors import ConfigError
from policy_service.ratelimits.redis_store import RedisSettings
from policy_service.workers.scrape import fetch_metrics_text

READY_SECONDS = 60.0
# Where the child reads the Redis URL: it may carry a password, kept off the command line.
REDIS_URL_ENV_VAR = "POLICY_SERVICE_REDIS_URL"


@dataclass(frozen=True)
class ServeSettings:
    bundle: Path
    workers: int
    authz_port: int
    metrics_port: int
    audit_log: Path
    grace_seconds: float = 2.0


def serve_command(settings: ServeSettings, redis: RedisSettings) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "policy_service",
        "serve",
        str(settings.bundle),
        "--workers",
        str(settings.workers),
        "--listen",
        f"127.0.0.1:{settings.authz_port}",
        "--metrics-listen",
        f"127.0.0.1:{settings.metrics_port}",
        "--audit-log",
        str(settings.audit_log),
        "--grace",
        f"{settings.grace_seconds:g}",
        "--redis-timeout",
        f"{redis.timeout_seconds:g}",
        "--redis-max-connections",
        str(redis.max_connections),
        "--redis-key-prefix",
        redis.key_prefix,
    ]
    if redis.cluster:
        command.append("--redis-cluster")
    if redis.pipeline:
        command.append("--redis-pipeline")
    return command


class ServeProcess:
    """``serve --workers N`` for the dev stack, started and stopped with it."""

    def __init__(self, settings: ServeSettings, redis: RedisSettings | None) -> None:
        self.settings = settings
        self._redis_settings = redis
        self.own_redis: RedisServer | None = None
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        redis = self._redis_settings
        if redis is None:
            self.own_redis = await asyncio.to_thread(RedisServer().start)
            redis = RedisSettings(url=self.own_redis.url)
        self._process = await asyncio.create_subprocess_exec(
            *serve_command(self.settings, redis),
            stdin=subprocess.DEVNULL,
            env={**os.environ, REDIS_URL_ENV_VAR: redis.url},
        )
        await self._wait_serving()

    async def _wait_serving(self) -> None:
        """Until the supervisor's /metrics counts every worker alive."""
        assert self._process is not None
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise ConfigError(
                    f"policy-service serve --workers {self.settings.workers} exited with "
                    f"{self._process.returncode}; its log is above"
                )
            if await asyncio.to_thread(self._workers_alive) == self.settings.workers:
                return
            await asyncio.sleep(0.1)
        raise ConfigError(
            f"policy-service serve --workers {self.settings.workers} did not serve within "
            f"{READY_SECONDS:g}s"
        )

    def _workers_alive(self) -> float:
        try:
            text = fetch_metrics_text(self.settings.metrics_port)
        except OSError:
            return 0
        for family in text_string_to_metric_families(text):
            if family.name == "policy_service_workers_alive":
                return sum(sample.value for sample in family.samples)
        return 0

    def reload_now(self) -> None:
        """SIGHUP: the supervisor passes it to every worker."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                # The supervisor kills a worker still draining after --grace + its margin.
                await asyncio.wait_for(process.wait(), self.settings.grace_seconds + 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self.own_redis is not None:
            await asyncio.to_thread(self.own_redis.stop)
            self.own_redis = None
