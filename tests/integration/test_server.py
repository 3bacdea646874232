"""The real grpc.aio server: Check over the wire, health, reflection, TLS, graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from policy_service.app import build_servicer
from policy_service.decisions.model import Decision
from policy_service.gateway.certs import generate_self_signed
from policy_service.pipeline import CheckPipeline
from policy_service.request.model import HttpRequest
from policy_service.server import PolicyServer, ServerSettings, TlsSettings
from policy_service.state import BundleState
from policy_service.telemetry.record import CheckRecord
from policy_service.telemetry.trail import Trail
from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.checks import check_request, header_dict

TOOL_CALL = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "get_quote"}}


@pytest.fixture
def test_bundle(tmp_path: Path) -> TestBundle:
    return write_test_bundle(tmp_path)


@pytest.fixture
async def server(test_bundle: TestBundle) -> AsyncIterator[PolicyServer]:
    server = PolicyServer(
        build_servicer(CheckPipeline(BundleState.from_bundle(test_bundle.bundle)), Trail()),
        ServerSettings(listen=("127.0.0.1:0",), grace_seconds=5),
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def stub(server: PolicyServer) -> AsyncIterator[external_auth_pb2_grpc.AuthorizationStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as channel:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)


def mcp_headers(token: str | None = None) -> dict[str, str]:
    headers = {"content-type": "application/json", "mcp-protocol-version": "2025-06-18"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


async def test_allow_over_grpc(
    stub: external_auth_pb2_grpc.AuthorizationStub, test_bundle: TestBundle
) -> None:
    token = test_bundle.token("fininfo:read")
    response = await stub.Check(check_request(headers=mcp_headers(token), body=TOOL_CALL))
    assert response.status.code == grpc.StatusCode.OK.value[0]
    assert response.HasField("ok_response")
    assert header_dict(response.ok_response.headers)["x-gateway-subject"] == "alice"
    assert "authorization" in response.ok_response.headers_to_remove


async def test_deny_over_grpc(stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
    response = await stub.Check(check_request(headers=mcp_headers(), body=TOOL_CALL))
    assert response.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert response.denied_response.status.code == 401
    assert "resource_metadata=" in header_dict(response.denied_response.headers)["www-authenticate"]
    assert json.loads(response.denied_response.body)["id"] == 3


async def test_repeated_authorization_headers_from_header_map(
    stub: external_auth_pb2_grpc.AuthorizationStub, test_bundle: TestBundle
) -> None:
    token = test_bundle.token("fininfo:read")
    headers = [
        *mcp_headers().items(),
        ("authorization", f"Bearer {token}"),
        ("authorization", "Bearer x"),
    ]
    response = await stub.Check(check_request(headers=headers, body=TOOL_CALL))
    assert response.denied_response.status.code == 400
    assert "multiple_authorization_headers" in response.denied_response.body


BAD_INPUTS = {
    "garbage-body": (mcp_headers, b"\xff\xfe{not json"),
    "deep-nesting": (mcp_headers, b"[" * 100_000 + b"]" * 100_000),
    "duplicate-keys": (
        mcp_headers,
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_quote","name":"place_trade"}}',
    ),
    "non-object": (mcp_headers, b'"tools/call"'),
    "huge-name": (
        mcp_headers,
        json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x" * 1_000_000}}
        ).encode(),
    ),
    "alg-none": (
        lambda: mcp_headers("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
        json.dumps(TOOL_CALL).encode(),
    ),
    "oversized-token": (lambda: mcp_headers("a" * 100_000), json.dumps(TOOL_CALL).encode()),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_bad_input_is_denied_and_the_service_keeps_serving(
    stub: external_auth_pb2_grpc.AuthorizationStub, test_bundle: TestBundle, case: str
) -> None:
    make_headers, body = BAD_INPUTS[case]
    response = await stub.Check(check_request(headers=make_headers(), body=body))
    assert response.HasField("denied_response")
    assert response.denied_response.status.code in (400, 401)
    assert "aaaaaaaaaa" not in response.denied_response.body  # the token is never echoed
    token = test_bundle.token("fininfo:read")
    after = await stub.Check(check_request(headers=mcp_headers(token), body=TOOL_CALL))
    assert after.HasField("ok_response")


async def test_health_and_reflection(server: PolicyServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.auth.v3.Authorization"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in reflection.ServerReflectionInfo(iter([request])):
            names = {service.name for service in reply.list_services_response.service}
            assert "envoy.service.auth.v3.Authorization" in names
            assert "grpc.health.v1.Health" in names


class SlowGateway(CheckPipeline):
    """A gateway whose checks wait for a release, to hold a check in flight."""

    def __init__(self, state: BundleState) -> None:
        super().__init__(state)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def check(self, request: HttpRequest, record: CheckRecord | None = None) -> Decision:
        self.entered.set()
        await self.release.wait()
        return await super().check(request, record)


async def test_graceful_stop_finishes_in_flight_checks(test_bundle: TestBundle) -> None:
    gateway = SlowGateway(BundleState.from_bundle(test_bundle.bundle))
    server = PolicyServer(
        build_servicer(gateway, Trail()), ServerSettings(listen=("127.0.0.1:0",), grace_seconds=10)
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        token = test_bundle.token("fininfo:read")
        in_flight = asyncio.ensure_future(
            stub.Check(check_request(headers=mcp_headers(token), body=TOOL_CALL))
        )
        await asyncio.wait_for(gateway.entered.wait(), 5)
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done(), "stop() must wait for the in-flight check"
        gateway.release.set()
        response = await asyncio.wait_for(in_flight, 10)
        assert response.HasField("ok_response")
        await asyncio.wait_for(stopping, 10)


async def test_tls_listener(tmp_path: Path, test_bundle: TestBundle) -> None:
    cert, key = generate_self_signed(tmp_path / "certs")
    server = PolicyServer(
        build_servicer(CheckPipeline(BundleState.from_bundle(test_bundle.bundle)), Trail()),
        ServerSettings(listen=("127.0.0.1:0",), tls=TlsSettings(cert, key)),
    )
    await server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        options = [("grpc.ssl_target_name_override", "localhost")]
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{server.ports[0]}", credentials, options
        ) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            response = await stub.Check(check_request(headers=mcp_headers(), body=TOOL_CALL))
            assert response.denied_response.status.code == 401
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await external_auth_pb2_grpc.AuthorizationStub(plain).Check(
                    check_request(), timeout=2
                )
    finally:
        await server.stop()


def test_serve_command_stops_cleanly_on_sigterm(test_bundle: TestBundle) -> None:
    from tests.support.envoy import free_port

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "policy_service",
            "serve",
            str(test_bundle.path),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if b"serving ext_authz" in line:
                break
        else:
            pytest.fail("the server never said it was serving")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        rest = process.stdout.read().decode()
        assert "draining" in rest
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()


async def test_mtls_listener_requires_a_client_certificate(
    tmp_path: Path, test_bundle: TestBundle
) -> None:
    server_cert, server_key = generate_self_signed(tmp_path / "server")
    client_cert, client_key = generate_self_signed(tmp_path / "client")
    server = PolicyServer(
        build_servicer(CheckPipeline(BundleState.from_bundle(test_bundle.bundle)), Trail()),
        ServerSettings(
            listen=("127.0.0.1:0",), tls=TlsSettings(server_cert, server_key, client_cert)
        ),
    )
    await server.start()
    target = f"127.0.0.1:{server.ports[0]}"
    options = [("grpc.ssl_target_name_override", "localhost")]
    try:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=server_cert.read_bytes(),
            private_key=client_key.read_bytes(),
            certificate_chain=client_cert.read_bytes(),
        )
        async with grpc.aio.secure_channel(target, with_cert, options) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            response = await stub.Check(check_request(headers=mcp_headers(), body=TOOL_CALL))
            assert response.denied_response.status.code == 401
        without_cert = grpc.ssl_channel_credentials(root_certificates=server_cert.read_bytes())
        async with grpc.aio.secure_channel(target, without_cert, options) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                    check_request(), timeout=2
                )
    finally:
        await server.stop()
