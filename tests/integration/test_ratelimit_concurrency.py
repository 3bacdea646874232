"""Two service processes, one Redis: a bucket is shared exactly, whoever is asked.

Two ``policy-service serve`` processes (the real CLI, separate ports, one bundle, one Redis)
are hammered by concurrent gRPC clients on ONE bucket (same client, same tool). However the
checks interleave across processes and connections, the admitted count stays within what a
token bucket allows in the time the test took: ``burst <= admitted <= burst + rate x
elapsed``. Run against one redis-server and against a 3-node Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from policy_service.dev.redis_server import RedisCluster, RedisServer
from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.checks import check_request
from tests.support.envoy import free_port
from tests.support.serve import READY_SECONDS, serve_command, serving

RATE_PER_SECOND = 20
BURST = 10
LIMITS = f"""\
  - name: hammered
    rate: {RATE_PER_SECOND}/s
    burst: {BURST}
    key: [client]
    match: {{upstreams: [fininfo], tools: [get_quote]}}
    on_store_failure: closed
"""
PROCESSES = 2
CLIENTS_PER_PROCESS = 8
HAMMER_SECONDS = 3.0


@contextlib.contextmanager
def serving_with_redis(
    bundle: TestBundle, redis_url: str, cluster: bool, logs: Path
) -> Iterator[list[int]]:
    ports = [free_port() for _ in range(PROCESSES)]
    # A generous store timeout: a slow test machine must not turn checks into 503s.
    flags = ["--redis-url", redis_url, "--redis-timeout", "1.0", "--audit-log", "off"]
    if cluster:
        flags.append("--redis-cluster")
    with serving([(port, serve_command(bundle.path, port, *flags)) for port in ports], logs):
        yield ports


def quote_call(token: str) -> external_auth_pb2.CheckRequest:
    return check_request(
        headers={
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-06-18",
        },
        body={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_quote", "arguments": {"symbol": "ACME"}},
        },
    )


def status_of(response: external_auth_pb2.CheckResponse) -> int:
    if response.HasField("ok_response"):
        return 200
    return int(response.denied_response.status.code)


async def hammer(ports: list[int], token: str) -> tuple[Counter[int], float]:
    """Every client checks in a loop for HAMMER_SECONDS; returns statuses and elapsed time."""
    request = quote_call(token)
    statuses: Counter[int] = Counter()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    try:
        stubs = [external_auth_pb2_grpc.AuthorizationStub(channel) for channel in channels]
        for channel in channels:  # connected before the clock starts
            await asyncio.wait_for(channel.channel_ready(), READY_SECONDS)

        async def client(stub: external_auth_pb2_grpc.AuthorizationStub, until: float) -> None:
            while time.monotonic() < until:
                response = await stub.Check(request, timeout=10)
                statuses[status_of(response)] += 1

        started = time.monotonic()
        until = started + HAMMER_SECONDS
        await asyncio.gather(
            *(client(stub, until) for stub in stubs for _ in range(CLIENTS_PER_PROCESS))
        )
        elapsed = time.monotonic() - started
    finally:
        for channel in channels:
            await channel.close(grace=None)
    return statuses, elapsed


@pytest.mark.parametrize("topology", ["server", "cluster"])
async def test_two_processes_sharing_redis_admit_what_one_bucket_allows(
    request: pytest.FixtureRequest, tmp_path: Path, topology: str
) -> None:
    running: RedisServer | RedisCluster = request.getfixturevalue(
        "clean_redis" if topology == "server" else "clean_cluster"
    )
    bundle = write_test_bundle(tmp_path, limits=LIMITS)
    token = bundle.token("fininfo:read", client_id=f"hammer-{topology}")
    with serving_with_redis(bundle, running.url, topology == "cluster", tmp_path) as ports:
        statuses, elapsed = await hammer(ports, token)
    admitted, refused = statuses[200], statuses[429]
    print(  # shown with -s: the observed numbers behind the bound
        f"{topology}: {admitted} admitted, {refused} refused in {elapsed:.2f}s; "
        f"bound {BURST}..{BURST + RATE_PER_SECOND * elapsed:.1f}"
    )
    assert set(statuses) <= {200, 429}, statuses  # no 503: the store always answered
    assert refused > 0
    assert BURST <= admitted <= BURST + RATE_PER_SECOND * elapsed
