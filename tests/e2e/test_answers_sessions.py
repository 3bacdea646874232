"""Sessions bound to their principal, end to end: real Envoy, the policy service's check and
ext_proc sides, the demo fininfo server (the official ``mcp`` SDK, stateful Streamable
HTTP: it opens an ``Mcp-Session-Id`` on ``initialize``), and the real SDK client.

The owner's session is driven by the SDK client in ``legacy`` mode (``initialize`` and a
session; the 2026-07-28 handshake is sessionless); another principal replays its id by
hand, as an attacker who saw it would. Two gateways (Envoy + policy service each) share
one Redis and one fininfo server, as two replicas behind a load balancer would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from policy_service.app import ServiceSettings, build_server
from policy_service.dev.redis_server import RedisServer
from policy_service.gateway.bootstrap import render_envoy_config
from policy_service.gateway.demo_topology import FININFO, demo_routes
from policy_service.gateway.layout import AuthzEndpoint, EnvoyLayout
from policy_service.ratelimits.redis_store import RedisSettings
from policy_service.server import ServerSettings
from policy_service.telemetry.audit import AuditFailureMode, Auditor
from policy_service.telemetry.facts import session_reference
from policy_service.telemetry.trail import Trail
from tests.e2e.conftest import BackgroundLoop, Stack, start_stack
from tests.support.envoy import EnvoyProcess, free_port
from tests.support.peers import tool_text

BIND = "      sessions: {bind: true}\n"
SHORT_TTL_SECONDS = 2
QUOTE = {"symbol": "ACME"}


@dataclass
class Gateways:
    """Gateway A (``stack``, audited) and gateway B (``second_url``): one Redis between them."""

    stack: Stack
    second_url: str
    audit_log: Path

    @property
    def first_url(self) -> str:
        return self.stack.fininfo_url

    @property
    def second_fininfo_url(self) -> str:
        return FININFO.url(self.second_url)

    def token(self, subject: str, *scopes: str, client_id: str = "session-agent") -> str:
        # One audience for both gateways: they serve one bundle, written for gateway A.
        return self.stack.bundle.token(
            *(scopes or ("fininfo:read",)),
            subject=subject,
            audience=self.stack.fininfo_url,
            client_id=client_id,
        )

    def audit_event(self, decision_id: str) -> dict[str, Any]:
        for line in self.audit_log.read_text().splitlines():
            event: dict[str, Any] = json.loads(line)
            if event["decision_id"] == decision_id:
                return event
        raise AssertionError(f"no audit event for decision {decision_id}")


def _second_gateway(stack: Stack, redis_url: str) -> Iterator[str]:
    """Another policy service and its own Envoy over gateway A's bundle, fininfo server and
    Redis: a second replica."""
    background = BackgroundLoop()

    async def make_server() -> Any:
        server = build_server(
            stack.bundle.bundle,
            ServiceSettings(
                ServerSettings(listen=("127.0.0.1:0",), grace_seconds=2),
                RedisSettings(redis_url, timeout_seconds=0.2),
            ),
            Trail(auditor=Auditor(None, AuditFailureMode.CLOSED)),
        )
        await server.start()
        return server

    server = background.run(make_server)
    port = free_port()
    layout = EnvoyLayout(
        upstreams=demo_routes(stack.peers.ports),
        authz=(AuthzEndpoint("127.0.0.1", server.ports[0]),),
        plain_port=port,
        tls_port=None,
        admin_port=0,
        otlp_collector=None,
        authz_timeout_seconds=1.0,
    )
    envoy = EnvoyProcess(render_envoy_config(layout)).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        envoy.stop()
        background.run(server.stop)
        background.close()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    tmp = tmp_path_factory.mktemp("sessions")
    audit_log = tmp / "audit.jsonl"
    with RedisServer() as redis_server:
        for stack in start_stack(
            tmp, fininfo_responses=BIND, redis_url=redis_server.url, audit_log=audit_log
        ):
            for second_url in _second_gateway(stack, redis_server.url):
                yield Gateways(stack, second_url, audit_log)


@pytest.fixture(scope="module")
def short_ttl_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # No Redis here: the bindings are this process's own.
    block = f"      sessions: {{bind: true, ttl_seconds: {SHORT_TTL_SECONDS}}}\n"
    yield from start_stack(tmp_path_factory.mktemp("sessions-ttl"), fininfo_responses=block)


# --- the client's side ------------------------------------------------------------------------


@dataclass
class Session:
    """One SDK client's session: its HTTP client (whose headers the SDK sends) and what its
    traffic showed; ``client`` once initialized."""

    http: httpx2.AsyncClient
    client: Client | None = None
    ids: list[str] = field(default_factory=list)  # Mcp-Session-Id answers
    version: str = ""  # the protocol version the session negotiated
    deletes: list[int] = field(default_factory=list)  # statuses of DELETE answers

    @property
    def id(self) -> str:
        assert len(set(self.ids)) == 1, "one initialize, one session id"
        return self.ids[0]

    async def quote(self) -> str:
        assert self.client is not None
        result = await self.client.call_tool("get_quote", QUOTE)
        assert not result.is_error, result
        return tool_text(result)


@asynccontextmanager
async def sdk_session(url: str, token: str) -> AsyncIterator[Session]:
    """An initialized SDK session; leaving it sends the session's DELETE (the SDK's own)."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=15)
    session = Session(http)

    async def on_response(response: httpx2.Response) -> None:
        request = response.request
        if request.method == "DELETE":
            session.deletes.append(response.status_code)
        if "mcp-session-id" in response.headers:
            session.ids.append(response.headers["mcp-session-id"])
        session.version = request.headers.get("mcp-protocol-version", session.version)

    http.event_hooks["response"] = [on_response]
    transport = streamable_http_client(url, http_client=http)
    async with http, asyncio.timeout(30), Client(transport, mode="legacy") as client:
        session.client = client
        yield session


async def replay(url: str, token: str, session_id: str, version: str) -> httpx.Response:
    """A tools/call sent by hand under ``session_id``, as an attacker who saw it would."""
    body = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": "tools/call",
        "params": {"name": "get_quote", "arguments": QUOTE},
    }
    async with httpx.AsyncClient(timeout=15) as http:
        return await http.post(
            url,
            json=body,
            headers={
                "authorization": f"Bearer {token}",
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": version,
                "mcp-session-id": session_id,
            },
        )


def reason_of(response: httpx.Response) -> object:
    """The gateway's data.reason; None for anything else (the upstream's own 404)."""
    try:
        return response.json()["error"]["data"]["reason"]
    except (ValueError, KeyError, TypeError):
        return None


def refused(response: httpx.Response, reason: str) -> str:
    """Assert a gateway refusal with ``reason``; its decision id."""
    assert response.status_code == 404, response.text
    assert reason_of(response) == reason, response.text
    return response.headers["x-decision-id"]


async def poll_refused(url: str, token: str, session_id: str, version: str, reason: str) -> None:
    """Until refused with ``reason``: a replica answers from memory for up to a second."""
    deadline = time.monotonic() + 5
    while True:
        answer = await replay(url, token, session_id, version)
        if answer.status_code == 404 and reason_of(answer) == reason:
            return
        assert time.monotonic() < deadline, (answer.status_code, answer.text)
        await asyncio.sleep(0.2)


# --- one gateway -------------------------------------------------------------------------------


async def test_another_principal_replaying_a_session_is_refused_and_audited(
    gateways: Gateways,
) -> None:
    alice = gateways.token("alice")
    async with sdk_session(gateways.first_url, alice) as session:
        assert "ACME" in await session.quote()

        mallory = gateways.token("mallory")
        answer = await replay(gateways.first_url, mallory, session.id, session.version)
        decision_id = refused(answer, "session_principal_mismatch")
        # Nothing in the refusal the attacker did not send: no owner, no other session.
        assert "alice" not in answer.text
        event = gateways.audit_event(decision_id)
        assert (event["decision"], event["reason"]) == ("deny", "session_principal_mismatch")
        assert event["http_status"] == 404
        # The session by reference only: its id would let a log reader into it.
        assert event["target"]["mcp_session_id"] == session_reference(session.id)
        assert session.id not in json.dumps(event)
        assert mallory not in json.dumps(event)

        # The owner's session is untouched by the attempt.
        assert "ACME" in await session.quote()

    # An answer's event is written when its ext_proc stream closes, which may be just
    # after the client has the answer.
    deadline = time.monotonic() + 5
    while True:
        events = [json.loads(line) for line in gateways.audit_log.read_text().splitlines()]
        answers = [e["answer"].get("session") for e in events if e["decision"] == "answer"]
        # Bound by the initialize answer, ended by the SDK's DELETE on leaving.
        if {"bound", "ended"} <= set(answers) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert "bound" in answers
    assert "ended" in answers


async def test_a_refreshed_token_keeps_its_session(gateways: Gateways) -> None:
    first = gateways.token("alice", "fininfo:read")
    async with sdk_session(gateways.first_url, first) as session:
        assert "ACME" in await session.quote()
        refreshed = gateways.token("alice", "fininfo:read", "fininfo:trade", client_id="renewed")
        assert refreshed != first
        session.http.headers["Authorization"] = f"Bearer {refreshed}"
        assert "ACME" in await session.quote()
        # The refreshed token is the one that passed, and it carries the same session.
        assert len(set(session.ids)) == 1


async def test_the_owners_delete_ends_the_binding(gateways: Gateways) -> None:
    alice = gateways.token("alice")
    async with sdk_session(gateways.first_url, alice) as session:
        assert "ACME" in await session.quote()
    assert session.deletes
    assert 200 <= session.deletes[-1] < 300
    answer = await replay(gateways.first_url, alice, session.id, session.version)
    refused(answer, "session_unknown")


async def test_another_principals_delete_does_not_end_the_session(gateways: Gateways) -> None:
    alice = gateways.token("alice")
    async with sdk_session(gateways.first_url, alice) as session:
        assert "ACME" in await session.quote()
        async with httpx.AsyncClient(timeout=15) as http:
            answer = await http.delete(
                gateways.first_url,
                headers={
                    "authorization": f"Bearer {gateways.token('mallory')}",
                    "mcp-protocol-version": session.version,
                    "mcp-session-id": session.id,
                },
            )
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"] == "session_principal_mismatch"
        assert "ACME" in await session.quote()


async def test_a_made_up_session_is_unknown(gateways: Gateways) -> None:
    alice = gateways.token("alice")
    answer = await replay(
        gateways.first_url, alice, "0123456789abcdef0123456789abcdef", "2025-06-18"
    )
    decision_id = refused(answer, "session_unknown")
    assert gateways.audit_event(decision_id)["reason"] == "session_unknown"


# --- two gateways, one Redis --------------------------------------------------------------------


async def test_a_session_bound_through_one_replica_is_enforced_by_the_other(
    gateways: Gateways,
) -> None:
    alice = gateways.token("alice")
    async with sdk_session(gateways.first_url, alice) as session:
        assert "ACME" in await session.quote()
        second = gateways.second_fininfo_url
        mallory = gateways.token("mallory")
        refused(
            await replay(second, mallory, session.id, session.version), "session_principal_mismatch"
        )
        # The owner is let through the other replica, to the same session upstream.
        answer = await replay(second, alice, session.id, session.version)
        assert answer.status_code == 200, answer.text
        assert "ACME" in answer.text
    # Ended through the first replica: the second refuses it too, once its memory lapses.
    assert session.deletes
    assert 200 <= session.deletes[-1] < 300
    await poll_refused(
        gateways.second_fininfo_url, alice, session.id, session.version, "session_unknown"
    )


# --- expiry -------------------------------------------------------------------------------------


async def test_a_session_unused_past_its_ttl_is_gone(short_ttl_stack: Stack) -> None:
    url = short_ttl_stack.fininfo_url
    token = short_ttl_stack.bundle.token("fininfo:read", audience=url)
    async with sdk_session(url, token) as session:
        assert "ACME" in await session.quote()  # used: alive
        await asyncio.sleep(SHORT_TTL_SECONDS + 1)
        answer = await replay(url, token, session.id, session.version)
        refused(answer, "session_unknown")
        # The owner's own client is refused the same way: the binding is gone, not hidden.
        with pytest.raises(MCPError, match="session is unknown or has ended"):
            await session.quote()
