"""The rendered gateway config, run in a real Envoy against a fake policy service.

What is proven here is Envoy's side of the contract the policy service relies on: what a Check
carries (route context, raw body, repeated headers, truncation marker), what Envoy does with
each answer (allow with header mutations, a "denial" with status 200, errors and outages), and
that streams pass unbuffered.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from envoy.type.v3 import http_status_pb2
from google.rpc import status_pb2

from policy_service.gateway.bootstrap import render_envoy_config
from policy_service.gateway.certs import generate_self_signed
from policy_service.gateway.layout import AuthzEndpoint, EnvoyLayout, UpstreamRoute
from tests.support.envoy import EnvoyProcess, free_port

Decide = Callable[[CheckRequest], CheckResponse]

MAX_BODY = 1024
DISCOVERY_BODY = '{"resource":"http://gateway/fininfo/","authorization_servers":[]}'
PERMISSION_DENIED = 7


# -- fake policy service ------------------------------------------------------------------


def header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


def allow() -> CheckResponse:
    return CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[header("x-gateway-subject", "alice")],
            headers_to_remove=["authorization"],
        ),
    )


def deny(status: int, body: str, *headers: base_pb2.HeaderValueOption) -> CheckResponse:
    return CheckResponse(
        status=status_pb2.Status(code=PERMISSION_DENIED),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=list(headers),
            body=body,
        ),
    )


def like_the_policy_service(request: CheckRequest) -> CheckResponse:
    """Allow upstream routes; answer discovery on the catch-all with 200; deny the rest."""
    http = request.attributes.request.http
    if "upstream" in request.attributes.context_extensions:
        return allow()
    if http.path.startswith("/.well-known/oauth-protected-resource/"):
        return deny(200, DISCOVERY_BODY, header("content-type", "application/json"))
    return deny(401, '{"error":"no_credential"}', header("www-authenticate", "Bearer"))


def crash(request: CheckRequest) -> CheckResponse:
    raise RuntimeError("policy service bug")  # grpc.aio turns this into status UNKNOWN


class FakeAuthz(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, decide: Decide, delay: float) -> None:
        self.decide = decide
        self.delay = delay
        self.requests: list[CheckRequest] = []

    async def Check(
        self, request: CheckRequest, context: grpc.aio.ServicerContext[CheckRequest, CheckResponse]
    ) -> CheckResponse:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.decide(request)


@dataclass
class AuthzServer:
    servicer: FakeAuthz
    server: grpc.aio.Server
    port: int

    async def stop(self) -> None:
        await self.server.stop(None)


async def start_authz(decide: Decide, delay: float = 0.0) -> AuthzServer:
    server = grpc.aio.server()
    servicer = FakeAuthz(decide, delay)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return AuthzServer(servicer, server, port)


# -- backend: echoes what it received, or streams server-sent events -----------------------


class Backend(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _BackendHandler)
        # The SSE handler sends its second event only once the client has seen the first:
        # if Envoy buffered the response, the gate would never open (and the wait times out).
        self.sse_gate = threading.Event()
        self.sse_gate_opened: list[bool] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _BackendHandler(BaseHTTPRequestHandler):
    server: Backend

    def do_GET(self) -> None:
        if self.path == "/sse":
            self._sse()
        else:
            self._echo()

    def do_POST(self) -> None:
        self._echo()

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        payload = {
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body,
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        self.wfile.write(b"data: one\n\n")
        self.wfile.flush()
        self.server.sse_gate_opened.append(self.server.sse_gate.wait(timeout=10))
        self.wfile.write(b"data: two\n\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# -- the gateway: Envoy + fake policy service(s) + backend ----------------------------------


@dataclass
class Gateway:
    envoy: EnvoyProcess
    authz: list[AuthzServer]
    layout: EnvoyLayout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.layout.plain_port}"

    @property
    def checks(self) -> list[CheckRequest]:
        return [check for server in self.authz for check in server.servicer.requests]


StartGateway = Callable[..., Awaitable[Gateway]]


def gateway_layout(backend_port: int, authz_ports: list[int]) -> EnvoyLayout:
    return EnvoyLayout(
        upstreams=(
            UpstreamRoute("fininfo", "/fininfo/", "127.0.0.1", backend_port),
            UpstreamRoute("helper", "/agents/helper/", "localhost", backend_port, protocol="a2a"),
            UpstreamRoute("bench", "/bench/", "", 0, direct_response_body="direct ok"),
        ),
        authz=tuple(AuthzEndpoint("127.0.0.1", port) for port in authz_ports),
        plain_port=free_port(),
        tls_port=None,
        admin_port=0,
        max_request_bytes=MAX_BODY,
    )


@pytest.fixture
async def start_gateway(backend: Backend) -> AsyncIterator[StartGateway]:
    async with AsyncExitStack() as cleanup:

        async def start(
            decide: Decide = like_the_policy_service,
            *,
            authz_count: int = 1,
            authz_delay: float = 0.0,
            **layout_changes: Any,
        ) -> Gateway:
            servers = [await start_authz(decide, authz_delay) for _ in range(authz_count)]
            for server in servers:
                cleanup.push_async_callback(server.stop)
            layout = gateway_layout(backend.port, [s.port for s in servers])
            layout = replace(layout, **layout_changes)
            envoy = EnvoyProcess(render_envoy_config(layout))
            await asyncio.to_thread(envoy.start)
            cleanup.push_async_callback(asyncio.to_thread, envoy.stop)
            return Gateway(envoy, servers, layout)

        yield start


def client(**options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=10, **options)


def header_map(check: CheckRequest) -> list[tuple[str, bytes]]:
    return [(h.key, h.raw_value) for h in check.attributes.request.http.header_map.headers]


def values(check: CheckRequest, name: str) -> list[bytes]:
    return [value for key, value in header_map(check) if key == name]


# -- allow and deny -----------------------------------------------------------------------


async def test_allow_sets_identity_header_and_strips_authorization(
    start_gateway: StartGateway, backend: Backend
) -> None:
    gateway = await start_gateway()
    async with client() as http:
        response = await http.get(
            f"{gateway.url}/fininfo/mcp?x=1",
            headers={"authorization": "Bearer secret", "x-gateway-subject": "mallory"},
        )
    assert response.status_code == 200
    echoed = response.json()
    received = dict(echoed["headers"])
    assert echoed["path"] == "/mcp?x=1"  # prefix rewritten, query kept
    assert "authorization" not in received
    # With "append" unset, ext_authz overwrites the copy the client sent (append_action's
    # zero value APPEND_IF_EXISTS_OR_ADD looks the same as unset): no spoofed identity.
    assert [v for k, v in echoed["headers"] if k == "x-gateway-subject"] == ["alice"]
    assert received["host"] == f"127.0.0.1:{backend.port}"
    assert received["x-forwarded-host"] == f"127.0.0.1:{gateway.layout.plain_port}"


async def test_denial_with_status_200_reaches_the_client_on_the_catch_all(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway()
    async with client() as http:
        discovery = await http.get(f"{gateway.url}/.well-known/oauth-protected-resource/fininfo/")
        other = await http.get(f"{gateway.url}/nowhere")
    assert discovery.status_code == 200
    assert discovery.text == DISCOVERY_BODY
    assert discovery.headers["content-type"] == "application/json"
    assert other.status_code == 401
    assert other.headers["www-authenticate"] == "Bearer"
    assert all("upstream" not in c.attributes.context_extensions for c in gateway.checks)


async def test_direct_response_route_answers_after_authz(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()
    async with client() as http:
        response = await http.get(f"{gateway.url}/bench/anything")
    assert response.status_code == 200
    assert response.text == "direct ok"
    (check,) = gateway.checks
    assert check.attributes.context_extensions["upstream"] == "bench"


# -- fail closed --------------------------------------------------------------------------


async def test_policy_service_down_is_503(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()
    await gateway.authz[0].stop()
    async with client() as http:
        response = await http.get(f"{gateway.url}/fininfo/mcp")
    assert response.status_code == 503


async def test_policy_service_error_is_503(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(crash)
    async with client() as http:
        response = await http.get(f"{gateway.url}/fininfo/mcp")
    assert response.status_code == 503
    assert len(gateway.checks) == 1  # an error that reached the service is not retried


async def test_policy_service_too_slow_is_503(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(authz_delay=2.0, authz_timeout_seconds=0.2)
    async with client() as http:
        response = await http.get(f"{gateway.url}/fininfo/mcp")
    assert response.status_code == 503


async def test_dead_process_is_skipped_when_there_are_several(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(authz_count=2)
    live, dead = gateway.authz
    await dead.stop()
    async with client() as http:
        statuses = [(await http.get(f"{gateway.url}/fininfo/x")).status_code for _ in range(20)]
    # A refused connection is retried on the other process, then the dead one is ejected.
    assert statuses == [200] * 20
    assert len(live.servicer.requests) == 20
    clusters = gateway.envoy.admin_get("/clusters")
    assert f"authz::127.0.0.1:{dead.port}::health_flags::/failed_outlier_check" in clusters


async def test_several_processes_share_checks(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(authz_count=2)
    async with client() as http:
        for _ in range(10):
            assert (await http.get(f"{gateway.url}/fininfo/x")).status_code == 200
    counts = [len(server.servicer.requests) for server in gateway.authz]
    assert sorted(counts) == [5, 5]  # round robin over one connection per process


# -- what a check carries -----------------------------------------------------------------


async def test_check_carries_route_context_raw_body_and_headers(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway()
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"q\xc3\xa9"}}'
    async with client() as http:
        response = await http.post(
            f"{gateway.url}/agents/helper/rpc",
            content=body,
            headers=[
                ("content-type", "application/json"),
                ("authorization", "Bearer one"),
                ("authorization", "Bearer two"),
                ("x-api-key", "key-one"),
                ("x-api-key", "key-two"),
            ],
        )
    assert response.status_code == 200
    (check,) = gateway.checks
    http_attrs = check.attributes.request.http
    assert dict(check.attributes.context_extensions) == {"upstream": "helper", "protocol": "a2a"}
    assert http_attrs.raw_body == body
    assert http_attrs.body == ""  # pack_as_bytes: raw_body only
    assert http_attrs.path == "/agents/helper/rpc"  # as routed, before the prefix rewrite
    assert not http_attrs.headers  # encode_raw_headers: only header_map is filled
    assert values(check, "x-envoy-auth-partial-body") == [b"false"]
    # Envoy quirk, even with encode_raw_headers: headers it keeps "inline" (authorization,
    # content-type, origin, user-agent, accept, ...) are joined with "," into ONE header_map
    # entry; other headers keep one entry per copy. The policy service must read a comma in
    # Authorization (never valid inside a Bearer or Basic credential) as "sent twice".
    assert values(check, "authorization") == [b"Bearer one,Bearer two"]
    assert values(check, "x-api-key") == [b"key-one", b"key-two"]


async def test_oversized_body_arrives_truncated_and_marked(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()
    body = b"x" * (MAX_BODY * 3)
    async with client() as http:
        response = await http.post(
            f"{gateway.url}/fininfo/mcp",
            content=body,
            headers={"x-envoy-auth-partial-body": "false"},  # a client's lie is overwritten
        )
    assert response.status_code == 200  # the fake allows; the real service denies truncation
    (check,) = gateway.checks
    assert check.attributes.request.http.raw_body == body[:MAX_BODY]
    assert values(check, "x-envoy-auth-partial-body") == [b"true"]
    assert response.json()["body"] == body.decode()  # the backend still gets all of it


async def test_path_tricks_are_normalized_before_authz(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()
    async with client() as http:
        dotted = await http.get(f"{gateway.url}/nowhere/../fininfo//mcp")
        escaped = await http.get(f"{gateway.url}/fininfo%2F..%2F..%2Fnowhere")
    assert dotted.status_code == 200
    assert dotted.json()["path"] == "/mcp"
    # UNESCAPE_AND_REDIRECT: the client is sent to the unescaped path; nothing is checked
    # or proxied for the escaped form.
    assert escaped.status_code in (301, 302, 307, 308)
    assert [c.attributes.request.http.path for c in gateway.checks] == ["/fininfo/mcp"]


# -- streams and TLS ----------------------------------------------------------------------


async def test_event_stream_is_not_buffered(start_gateway: StartGateway, backend: Backend) -> None:
    gateway = await start_gateway()
    events: list[str] = []
    async with client() as http, http.stream("GET", f"{gateway.url}/fininfo/sse") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                backend.sse_gate.set()  # the first event arrived while the stream is open
    assert events == ["one", "two"]
    assert backend.sse_gate_opened == [True]


async def test_tls_listener_serves_the_same_routes(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    cert, key = generate_self_signed(tmp_path)
    gateway = await start_gateway(
        tls_port=free_port(), tls_cert_file=str(cert), tls_key_file=str(key)
    )
    trust = ssl.create_default_context(cafile=str(cert))
    async with client(verify=trust) as http:
        response = await http.get(f"https://localhost:{gateway.layout.tls_port}/fininfo/mcp")
    assert response.status_code == 200
    assert response.json()["path"] == "/mcp"
    (check,) = gateway.checks
    assert check.attributes.request.http.scheme == "https"


# -- what a client can hold without sending anything ------------------------------------------


async def test_a_client_that_never_finishes_its_headers_is_cut_off(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(request_headers_timeout_seconds=0.5)
    assert gateway.layout.plain_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.layout.plain_port)
    try:
        # No blank line: the headers never end (a slow-header client).
        writer.write(b"GET /fininfo/mcp HTTP/1.1\r\nHost: gateway\r\n")
        await writer.drain()
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), timeout=10)  # until Envoy closes
        waited = time.monotonic() - started
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert 0.3 < waited < 5
    assert gateway.checks == []  # nothing reached the policy service
