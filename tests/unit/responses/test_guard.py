"""Sessions bound to their principal, through the check and the answer as the gateway runs
them: a check (``CheckPipeline``) opens a session, its answer (``ResponsePipeline``) binds
it, and later checks are refused or let through by that binding."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from policy_service.answering import ResponsePipeline
from policy_service.decisions.model import Allow, Decision, Deny
from policy_service.decisions.render import render_deny
from policy_service.dev.redis_server import RedisServer
from policy_service.edge.envoy_out import to_check_response
from policy_service.pipeline import CheckPipeline
from policy_service.ratelimits.redis_store import RedisStore
from policy_service.request.model import HttpRequest
from policy_service.responses.guard import AnswerGuard
from policy_service.responses.plan import PLAN_METADATA_KEY, SessionWork
from policy_service.responses.shared import RedisState, SharedState
from policy_service.state import BundleState
from policy_service.testing import FakeClock
from policy_service.testing import mcp_request as mcp_post
from policy_service.testing import tool_call_body as tool_call
from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.redis import clean_redis, redis_server, redis_store

__all__ = ["clean_redis", "redis_server", "redis_store"]  # fixtures, used by name

SESSION = "9d1e0f2a7b3c4d5e8f6a1b2c3d4e5f60"
FRESH = "5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d"
SESSIONS_BLOCK = "      sessions: {bind: true, ttl_seconds: 60}\n"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "guard-test", "version": "1"},
    },
}


@dataclass
class Gateway:
    """One process's check side and answer side over one guard, as ``app`` builds them."""

    bundle: TestBundle
    checks: CheckPipeline
    answers: ResponsePipeline

    def token(self, subject: str = "alice", *scopes: str, **claims: Any) -> str:
        return self.bundle.token(*(scopes or ("fininfo:read",)), subject=subject, **claims)

    async def check(self, request: HttpRequest) -> Decision:
        return await self.checks.check(request)

    async def answer(
        self, decision: Decision, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> str:
        """Run the answer to an allowed check through the response side; its session event."""
        assert isinstance(decision, Allow)
        assert decision.response_plan is not None
        plan_text = decision.response_plan.to_metadata()[PLAN_METADATA_KEY]
        processing = self.answers.open(plan_text)
        answer_headers = {"content-type": "application/json", **(headers or {})}
        await processing.on_headers(status, answer_headers)
        await processing.finish()
        return processing.session_event

    async def open_session(self, token: str, session_id: str = SESSION) -> None:
        decision = await self.check(mcp_post(INITIALIZE, token=token))
        assert await self.answer(decision, headers={"mcp-session-id": session_id}) == "bound"


async def make_gateway(
    bundle: TestBundle, clock: FakeClock, shared: SharedState | None = None
) -> Gateway:
    state = BundleState.from_bundle(bundle.bundle)
    await state.jwt.start()
    checks = CheckPipeline(state, guard=AnswerGuard(shared, clock=clock))
    return Gateway(bundle, checks, ResponsePipeline(checks.bundles, checks.guard))


@pytest.fixture
def test_bundle(tmp_path: Path) -> TestBundle:
    return write_test_bundle(tmp_path, fininfo_responses=SESSIONS_BLOCK)


@pytest.fixture
async def gateway(test_bundle: TestBundle, clock: FakeClock) -> Gateway:
    return await make_gateway(test_bundle, clock)


def quote(token: str, session_id: str | None = SESSION, **headers: str) -> HttpRequest:
    if session_id is not None:
        headers["mcp-session-id"] = session_id
    return mcp_post(
        tool_call("get_quote", arguments={"symbol": "ACME"}), token=token, headers=headers
    )


def bodyless(method: str, token: str, session_id: str) -> HttpRequest:
    return HttpRequest(
        method=method,
        path="/fininfo/mcp",
        headers={"authorization": f"Bearer {token}", "mcp-session-id": session_id},
    )


def refusal(decision: Decision) -> tuple[int, dict[str, Any]]:
    """The refusal's HTTP status and JSON-RPC error object, as the client gets them."""
    assert isinstance(decision, Deny), decision
    answer = render_deny(decision)
    error: dict[str, Any] = json.loads(answer.body)["error"]
    return answer.status, error


# --- the check side ------------------------------------------------------------------------


async def test_initialize_is_marked_to_bind_for_its_principal(gateway: Gateway) -> None:
    decision = await gateway.check(mcp_post(INITIALIZE, token=gateway.token()))
    assert isinstance(decision, Allow)
    plan = decision.response_plan
    assert plan is not None
    assert plan.session is SessionWork.BIND
    assert plan.principal is not None
    assert plan.principal.subject == "alice"
    # The plan in the ext_authz metadata is what turns Envoy's ext_proc filter on.
    metadata = to_check_response(decision, "d-1").dynamic_metadata
    assert PLAN_METADATA_KEY in metadata.fields


async def test_the_owner_uses_its_session(gateway: Gateway) -> None:
    await gateway.open_session(gateway.token())
    assert isinstance(await gateway.check(quote(gateway.token())), Allow)


async def test_another_principal_replaying_the_session_is_refused_with_404(
    gateway: Gateway,
) -> None:
    await gateway.open_session(gateway.token("alice"))
    bob = gateway.token("bob")
    status, error = refusal(await gateway.check(quote(bob)))
    assert status == 404
    assert error["data"]["reason"] == "session_principal_mismatch"
    assert SESSION not in json.dumps(error)
    assert bob not in json.dumps(error)
    # The owner's session is untouched by the attempt.
    assert isinstance(await gateway.check(quote(gateway.token("alice"))), Allow)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_another_principal_cannot_stream_or_end_the_session(
    gateway: Gateway, method: str
) -> None:
    await gateway.open_session(gateway.token("alice"))
    decision = await gateway.check(bodyless(method, gateway.token("bob"), SESSION))
    assert isinstance(decision, Deny)
    answer = render_deny(decision)
    # No JSON-RPC message in a GET or DELETE: the refusal is a plain JSON error.
    assert answer.status == 404
    assert json.loads(answer.body)["error"] == "session_principal_mismatch"
    # Refused before any plan: no DELETE answer could have ended the owner's binding.
    assert isinstance(await gateway.check(quote(gateway.token("alice"))), Allow)


async def test_a_refreshed_token_for_the_same_subject_keeps_the_session(gateway: Gateway) -> None:
    await gateway.open_session(gateway.token("alice", "fininfo:read"))
    refreshed = gateway.token("alice", "fininfo:read", "fininfo:trade", client_id="agent-2")
    assert isinstance(await gateway.check(quote(refreshed)), Allow)


async def test_a_made_up_session_is_unknown(gateway: Gateway) -> None:
    status, error = refusal(await gateway.check(quote(gateway.token(), "made-up-session")))
    assert (status, error["data"]["reason"]) == (404, "session_unknown")


@pytest.mark.parametrize("variant", [SESSION.upper(), f"{SESSION}x", f"{SESSION},{SESSION}"])
async def test_the_owners_id_spelled_differently_is_unknown(gateway: Gateway, variant: str) -> None:
    await gateway.open_session(gateway.token())
    status, error = refusal(await gateway.check(quote(gateway.token(), variant)))
    assert (status, error["data"]["reason"]) == (404, "session_unknown")


async def test_two_session_headers_are_refused(gateway: Gateway) -> None:
    await gateway.open_session(gateway.token("alice"))
    request = quote(gateway.token("bob"), "bob-session")
    # Envoy's raw header map: both values, joined, and the name listed as repeated.
    request.headers["mcp-session-id"] = f"bob-session,{SESSION}"
    repeated = HttpRequest(
        request.method,
        request.path,
        headers=request.headers,
        body=request.body,
        repeated_headers=frozenset({"mcp-session-id"}),
    )
    status, error = refusal(await gateway.check(repeated))
    assert (status, error["data"]["reason"]) == (400, "ambiguous_session")


async def test_no_header_a_client_sends_can_make_a_plan(gateway: Gateway) -> None:
    """Only the check writes the plan, into metadata a client can't reach: a tools/call
    that needs no answer work gets none, whatever the client sends."""
    await gateway.open_session(gateway.token())
    forged = {"x-policy-response": "1", PLAN_METADATA_KEY: '{"upstream": "fininfo"}'}
    decision = await gateway.check(quote(gateway.token(), **forged))
    assert isinstance(decision, Allow)
    assert decision.response_plan is None
    metadata = to_check_response(decision, "d-2").dynamic_metadata
    assert PLAN_METADATA_KEY not in metadata.fields


async def test_without_binding_a_session_id_is_not_checked(
    tmp_path: Path, clock: FakeClock
) -> None:
    gateway = await make_gateway(write_test_bundle(tmp_path), clock)
    assert isinstance(await gateway.check(quote(gateway.token(), "made-up-session")), Allow)


# --- the answer side ------------------------------------------------------------------------


async def test_the_owners_delete_ends_the_binding(gateway: Gateway) -> None:
    alice = gateway.token()
    await gateway.open_session(alice)
    decision = await gateway.check(bodyless("DELETE", alice, SESSION))
    assert await gateway.answer(decision, 204) == "ended"
    status, error = refusal(await gateway.check(quote(alice)))
    assert (status, error["data"]["reason"]) == (404, "session_unknown")


async def test_a_delete_the_upstream_refused_keeps_the_binding(gateway: Gateway) -> None:
    alice = gateway.token()
    await gateway.open_session(alice)
    decision = await gateway.check(bodyless("DELETE", alice, SESSION))
    assert await gateway.answer(decision, 405) == ""
    assert isinstance(await gateway.check(quote(alice)), Allow)


async def test_a_stateless_server_opens_no_session(gateway: Gateway) -> None:
    alice = gateway.token()
    decision = await gateway.check(mcp_post(INITIALIZE, token=alice))
    assert await gateway.answer(decision) == ""  # no Mcp-Session-Id: nothing to bind
    assert isinstance(await gateway.check(quote(alice, None)), Allow)


async def test_a_failed_initialize_binds_nothing(gateway: Gateway) -> None:
    alice = gateway.token()
    decision = await gateway.check(mcp_post(INITIALIZE, token=alice))
    assert await gateway.answer(decision, 400, {"mcp-session-id": SESSION}) == ""
    status, error = refusal(await gateway.check(quote(alice)))
    assert (status, error["data"]["reason"]) == (404, "session_unknown")


async def test_a_session_id_on_another_answer_binds_nothing(gateway: Gateway) -> None:
    alice = gateway.token()
    decision = await gateway.check(
        mcp_post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, token=alice)
    )
    assert isinstance(decision, Allow)
    assert decision.response_plan is not None
    assert decision.response_plan.session is SessionWork.NONE
    assert await gateway.answer(decision, headers={"mcp-session-id": SESSION}) == ""
    status, error = refusal(await gateway.check(quote(alice)))
    assert (status, error["data"]["reason"]) == (404, "session_unknown")


async def test_an_upstream_reopening_anothers_session_does_not_give_it_away(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    await gateway.open_session(gateway.token("alice"))
    bob = gateway.token("bob")
    decision = await gateway.check(mcp_post(INITIALIZE, token=bob))
    with caplog.at_level(logging.WARNING, "policy_service.answers"):
        assert await gateway.answer(decision, headers={"mcp-session-id": SESSION}) == "conflict"
    assert "already bound to another principal" in caplog.text
    assert SESSION not in caplog.text
    assert "bob" not in caplog.text
    status, error = refusal(await gateway.check(quote(bob)))
    assert (status, error["data"]["reason"]) == (404, "session_principal_mismatch")
    assert isinstance(await gateway.check(quote(gateway.token("alice"))), Allow)


async def test_a_binding_unused_past_its_ttl_is_unknown(gateway: Gateway, clock: FakeClock) -> None:
    alice = gateway.token()
    await gateway.open_session(alice)
    clock.advance(61)
    status, error = refusal(await gateway.check(quote(alice)))
    assert (status, error["data"]["reason"]) == (404, "session_unknown")


# --- shared state in Redis -------------------------------------------------------------------


async def test_a_replica_enforces_what_another_bound_in_redis(
    test_bundle: TestBundle, redis_store: RedisStore, clock: FakeClock
) -> None:
    first = await make_gateway(test_bundle, clock, RedisState(redis_store))
    second = await make_gateway(test_bundle, clock, RedisState(redis_store))
    await first.open_session(first.token("alice"))
    status, error = refusal(await second.check(quote(second.token("bob"))))
    assert (status, error["data"]["reason"]) == (404, "session_principal_mismatch")
    alice = second.token("alice")
    decision = await second.check(bodyless("DELETE", alice, SESSION))
    assert await second.answer(decision, 200) == "ended"
    clock.advance(2)  # past what the first answers from memory
    status, error = refusal(await first.check(quote(first.token("alice"))))
    assert (status, error["data"]["reason"]) == (404, "session_unknown")


async def test_redis_down_refuses_sessions_with_503(
    test_bundle: TestBundle,
    redis_store: RedisStore,
    clean_redis: RedisServer,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = await make_gateway(test_bundle, clock, RedisState(redis_store))
    alice = gateway.token("alice")
    await gateway.open_session(alice)
    clean_redis.stop()
    clock.advance(2)  # nothing answered from memory: every check must ask Redis
    for token in (alice, gateway.token("bob")):
        status, error = refusal(await gateway.check(quote(token)))
        assert (status, error["data"]["reason"]) == (503, "response_state_unavailable")
    # An answer that cannot be bound is not an error for the client, only unbound: its
    # session is refused as unknown once Redis is back.
    decision = await gateway.check(mcp_post(INITIALIZE, token=alice))
    with caplog.at_level(logging.WARNING, "policy_service.answers"):
        assert await gateway.answer(decision, headers={"mcp-session-id": FRESH}) == ""
    assert "could not be stored" in caplog.text
    assert FRESH not in caplog.text
    assert alice not in caplog.text
    # Sessions need no Redis where nothing carries one.
    assert isinstance(await gateway.check(quote(alice, None)), Allow)


async def test_a_session_refusal_is_a_404_even_where_refusals_answer_in_band(
    tmp_path: Path, clock: FakeClock
) -> None:
    # denial_style jsonrpc answers a forbidden call with 200 + JSON-RPC error; a session
    # refusal must stay a 404, the one answer that makes a client start a new session.
    bundle = write_test_bundle(tmp_path, denial_style="jsonrpc", fininfo_responses=SESSIONS_BLOCK)
    gateway = await make_gateway(bundle, clock)
    await gateway.open_session(gateway.token("alice"))
    status, error = refusal(await gateway.check(quote(gateway.token("bob"))))
    assert (status, error["data"]["reason"]) == (404, "session_principal_mismatch")


def test_every_guard_kind_is_a_deny_kind_of_the_same_name() -> None:
    from policy_service.decisions.model import ANSWERS, DenyKind
    from policy_service.responses.guard import GuardKind

    statuses = {kind: ANSWERS[DenyKind[kind]].http_status for kind in GuardKind}
    assert statuses == {
        GuardKind.FORBIDDEN: 403,
        GuardKind.SESSION_GONE: 404,
        GuardKind.RESPONSE_STATE_UNAVAILABLE: 503,
    }
