"""A whole gateway for end-to-end tests: real Envoy -> policy service -> demo MCP/A2A peers.

The policy service and the peers run on an event loop in a background thread, so the
stack lives for a whole module while each test drives the real SDK clients on its own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from policy_service.app import ServiceSettings, build_server
from policy_service.dev.peers import PEER_NAMES, DemoPeers
from policy_service.gateway.bootstrap import render_envoy_config
from policy_service.gateway.demo_topology import FININFO, HELPER, demo_routes
from policy_service.gateway.layout import AuthzEndpoint, EnvoyLayout, OtlpCollector
from policy_service.ratelimits.redis_store import RedisSettings
from policy_service.server import PolicyServer, ServerSettings
from policy_service.telemetry.audit import AuditFailureMode, Auditor, FileSink
from policy_service.telemetry.metrics import CheckMetrics
from policy_service.telemetry.trail import Trail
from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.envoy import EnvoyProcess, free_port
from tests.support.otlp import OtlpReceiver

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
        async def wrapper() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapper(), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Stack:
    url: str
    bundle: TestBundle
    peers: DemoPeers
    server: PolicyServer
    envoy: EnvoyProcess

    @property
    def fininfo_url(self) -> str:
        return FININFO.url(self.url)

    @property
    def helper_url(self) -> str:
        return HELPER.url(self.url)

    def bearer(self, *scopes: str, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bundle.token(*scopes, **kwargs)}"}


def start_stack(
    tmp: Path,
    *,
    denial_style: str = "http",
    limits: str = "",
    redis_url: str | None = None,
    otlp: OtlpReceiver | None = None,
    audit_log: Path | None = None,
    metrics: bool = False,
    redis_timeout: float = 0.1,
    authz_timeout_seconds: float = 1.0,
    fininfo_responses: str = "",
    extra_files: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """``limits`` is a bundle ``limits:`` block; with ``redis_url`` its buckets are in Redis
    (waited on for ``redis_timeout`` seconds per check; Envoy waits ``authz_timeout_seconds``
    for a check).

    With ``otlp``, Envoy and the service both export spans to that receiver; with
    ``audit_log`` the service appends audit events there; ``metrics`` serves /metrics.
    ``fininfo_responses`` and ``extra_files`` go to ``write_test_bundle``.
    """
    http_port = free_port()
    url = f"http://127.0.0.1:{http_port}"
    background = BackgroundLoop()
    peers = DemoPeers(
        "127.0.0.1",
        dict.fromkeys(PEER_NAMES, 0),
        public_base_url=HELPER.url(url),
    )
    background.run(peers.start)
    bundle = write_test_bundle(
        tmp,
        gateway=url,
        denial_style=denial_style,
        peer_ports=peers.ports,
        limits=limits,
        fininfo_responses=fininfo_responses,
        extra_files=extra_files,
    )

    async def make_server() -> PolicyServer:
        # Built on the background loop: the Redis client belongs to the loop it runs on.
        trail = _trail(otlp, audit_log, metrics)
        server = build_server(
            bundle.bundle,
            ServiceSettings(
                ServerSettings(
                    listen=("127.0.0.1:0",),
                    grace_seconds=2,
                    metrics_listen=("127.0.0.1", 0) if metrics else None,
                ),
                None
                if redis_url is None
                else RedisSettings(redis_url, timeout_seconds=redis_timeout),
            ),
            trail,
        )
        await server.start()
        return server

    server = background.run(make_server)
    layout = EnvoyLayout(
        upstreams=demo_routes(peers.ports),
        authz=(AuthzEndpoint("127.0.0.1", server.ports[0]),),
        plain_port=http_port,
        tls_port=None,
        admin_port=0,
        otlp_collector=None if otlp is None else OtlpCollector("127.0.0.1", otlp.port),
        authz_timeout_seconds=authz_timeout_seconds,
    )
    envoy = EnvoyProcess(render_envoy_config(layout)).start()
    try:
        yield Stack(url, bundle, peers, server, envoy)
    finally:
        envoy.stop()
        background.run(server.stop)
        background.run(peers.stop)
        background.close()


def _trail(otlp: OtlpReceiver | None, audit_log: Path | None, metrics: bool) -> Trail:
    provider = None
    if otlp is not None:
        provider = TracerProvider(resource=Resource.create({"service.name": "policy-service"}))
        exporter = OTLPSpanExporter(endpoint=otlp.endpoint, insecure=True)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    sink = None if audit_log is None else FileSink.open(audit_log)
    return Trail(
        tracer_provider=provider,
        auditor=Auditor(sink, AuditFailureMode.CLOSED),
        metrics=CheckMetrics() if metrics else None,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="module")
def jsonrpc_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(tmp_path_factory.mktemp("stack-jsonrpc"), denial_style="jsonrpc")
