"""The request path end to end, without a server: HttpRequest in, Decision and HTTP answer out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policy_service.bundles.loader import load_bundle
from policy_service.decisions.model import Allow, Deny, DenyKind, Serve
from policy_service.decisions.render import render_deny, render_serve
from policy_service.pipeline import CheckPipeline
from policy_service.request.model import HttpRequest
from policy_service.state import BundleState
from policy_service.testing import mcp_request as mcp_post
from policy_service.testing import tool_call_body as tool_call
from tests.support.bundles import (
    CI_BOT_KEY,
    FININFO_RESOURCE,
    HELPER_RESOURCE,
    TestBundle,
    write_test_bundle,
)


@pytest.fixture
def test_bundle(tmp_path: Path) -> TestBundle:
    return write_test_bundle(tmp_path)


@pytest.fixture
async def gateway(test_bundle: TestBundle) -> CheckPipeline:
    state = BundleState.from_bundle(test_bundle.bundle)
    await state.jwt.start()
    return CheckPipeline(state)


async def test_protected_resource_metadata_is_served_without_a_token(
    gateway: CheckPipeline,
) -> None:
    decision = await gateway.check(
        HttpRequest(method="GET", path="/.well-known/oauth-protected-resource/fininfo/mcp")
    )
    assert isinstance(decision, Serve)
    document = json.loads(render_serve(decision).body)
    assert document["resource"] == FININFO_RESOURCE
    assert document["authorization_servers"] == ["https://idp.test.example"]
    # fininfo:notes is the scope of the demo's response-side tools (tests/support/bundles.py).
    assert document["scopes_supported"] == ["fininfo:notes", "fininfo:read", "fininfo:trade"]
    assert document["bearer_methods_supported"] == ["header"]


async def test_unknown_path_is_404(gateway: CheckPipeline) -> None:
    decision = await gateway.check(HttpRequest(method="GET", path="/nowhere"))
    assert isinstance(decision, Deny)
    assert render_deny(decision).status == 404


async def test_missing_token_gets_401_with_resource_metadata(gateway: CheckPipeline) -> None:
    decision = await gateway.check(mcp_post(tool_call("get_quote")))
    assert isinstance(decision, Deny)
    assert decision.kind is DenyKind.MISSING_CREDENTIAL
    answer = render_deny(decision)
    assert answer.status == 401
    challenge = dict(answer.headers)["www-authenticate"]
    assert challenge == (
        'Bearer resource_metadata="http://gateway.test.example'
        '/.well-known/oauth-protected-resource/fininfo/mcp"'
    )
    body = json.loads(answer.body)
    assert body["id"] == 7
    assert body["error"]["code"] == 401
    assert body["error"]["data"]["reason"] == "missing_credential"


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda b: b.token("fininfo:read", lifetime=-120), "token_expired"),
        (lambda b: b.token("fininfo:read", audience="https://other.example/mcp"), "wrong_audience"),
        (lambda b: "not.a.jwt", "malformed_token"),
    ],
    ids=["expired", "wrong-audience", "garbage"],
)
async def test_bad_tokens_get_401_invalid_token(
    gateway: CheckPipeline, test_bundle: TestBundle, make_token: Any, reason: str
) -> None:
    token = make_token(test_bundle)
    decision = await gateway.check(mcp_post(tool_call("get_quote"), token=token))
    assert isinstance(decision, Deny)
    assert decision.kind is DenyKind.INVALID_CREDENTIAL
    assert decision.reason == reason
    answer = render_deny(decision)
    assert answer.status == 401
    challenge = dict(answer.headers)["www-authenticate"]
    assert challenge.startswith(f'Bearer error="invalid_token", error_description="{reason}"')
    assert token not in answer.body.decode()


async def test_allowed_tool_call_sets_identity_and_strips_credentials(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    token = test_bundle.token("fininfo:read")
    request = mcp_post(
        tool_call("get_quote"),
        token=token,
        headers={"x-gateway-subject": "mallory", "x-gateway-role": "admin"},
    )
    decision = await gateway.check(request)
    assert isinstance(decision, Allow)
    assert decision.rules == ("read",)
    headers = dict(decision.headers_to_set)
    assert headers["x-gateway-subject"] == "alice"
    assert headers["x-gateway-issuer"] == "test-idp"
    assert headers["x-gateway-client-id"] == "test-client"
    assert headers["x-gateway-scopes"] == "fininfo:read"
    # The spoofed subject is overwritten; the spoofed role is removed outright.
    assert "authorization" in decision.headers_to_remove
    assert "x-gateway-role" in decision.headers_to_remove


async def test_missing_scope_names_every_needed_scope(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    decision = await gateway.check(
        mcp_post(tool_call("place_trade"), token=test_bundle.token("fininfo:read"))
    )
    assert isinstance(decision, Deny)
    assert decision.kind is DenyKind.INSUFFICIENT_SCOPE
    answer = render_deny(decision)
    assert answer.status == 403
    assert dict(answer.headers)["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="fininfo:trade", resource_metadata='
        '"http://gateway.test.example/.well-known/oauth-protected-resource/fininfo/mcp"'
    )
    error = json.loads(answer.body)["error"]
    assert error["data"] == {
        "reason": "insufficient_scope",
        "scopes": ["fininfo:trade"],
        "missing_scopes": ["fininfo:trade"],
        # No "rule": clients are not told rule names unless the bundle says so.
    }
    assert decision.rule == "trade"  # the audit event names it (test_trail checks it does)


async def test_a_bundle_may_name_the_refusing_rule_to_clients(tmp_path: Path) -> None:
    test_bundle = write_test_bundle(tmp_path, denial_style="jsonrpc")
    test_bundle.path.write_text(
        test_bundle.path.read_text() + "gateway:\n  expose_rule_names: true\n"
    )
    bundle = load_bundle(test_bundle.path)
    assert all(upstream.expose_rule_names for upstream in bundle.upstreams)
    state = BundleState.from_bundle(bundle)
    await state.jwt.start()
    try:
        pipeline = CheckPipeline(state)
        scope = await pipeline.check(
            mcp_post(tool_call("place_trade"), token=test_bundle.token("fininfo:read"))
        )
        denied = await pipeline.check(
            mcp_post(tool_call("halt_trading"), token=test_bundle.token("fininfo:read"))
        )
    finally:
        await state.jwt.aclose()
    assert isinstance(scope, Deny)
    assert isinstance(denied, Deny)
    assert json.loads(render_deny(scope).body)["error"]["data"]["rule"] == "trade"
    assert json.loads(render_deny(denied).body)["error"]["data"] == {
        "reason": "denied_by_rule",
        "rule": "trading-off-hours",
    }


async def test_by_default_no_denial_names_a_rule_to_the_client(tmp_path: Path) -> None:
    test_bundle = write_test_bundle(tmp_path, denial_style="jsonrpc")
    assert not any(upstream.expose_rule_names for upstream in test_bundle.bundle.upstreams)
    state = BundleState.from_bundle(test_bundle.bundle)
    await state.jwt.start()
    try:
        denied = await CheckPipeline(state).check(
            mcp_post(tool_call("halt_trading"), token=test_bundle.token("fininfo:read"))
        )
    finally:
        await state.jwt.aclose()
    assert isinstance(denied, Deny)
    assert denied.rule == "trading-off-hours"
    answer = render_deny(denied)
    assert json.loads(answer.body)["error"]["data"] == {"reason": "denied_by_rule"}
    assert b"trading-off-hours" not in answer.body
    assert not any("trading-off-hours" in value for _, value in answer.headers)


async def test_jsonrpc_denial_style_answers_200_with_the_request_id(tmp_path: Path) -> None:
    test_bundle = write_test_bundle(tmp_path, denial_style="jsonrpc")
    state = BundleState.from_bundle(test_bundle.bundle)
    await state.jwt.start()
    decision = await CheckPipeline(state).check(
        mcp_post(tool_call("place_trade", request_id=42), token=test_bundle.token("fininfo:read"))
    )
    assert isinstance(decision, Deny)
    answer = render_deny(decision)
    assert answer.status == 200
    body = json.loads(answer.body)
    assert body["id"] == 42
    assert body["error"]["code"] == 403
    assert body["error"]["data"]["scopes"] == ["fininfo:trade"]


async def test_tool_without_rule_is_denied_by_default(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    token = test_bundle.token("fininfo:read", "fininfo:trade")
    decision = await gateway.check(mcp_post(tool_call("drop_tables"), token=token))
    assert isinstance(decision, Deny)
    assert decision.reason == "no_matching_rule"
    assert render_deny(decision).status == 403
    assert "www-authenticate" not in dict(render_deny(decision).headers)


async def test_deny_rule_wins_before_later_allow(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    token = test_bundle.token("fininfo:read", "fininfo:trade")
    decision = await gateway.check(mcp_post(tool_call("halt_trading"), token=token))
    assert isinstance(decision, Deny)
    assert (decision.reason, decision.rule) == ("denied_by_rule", "trading-off-hours")


async def test_client_deny_list(gateway: CheckPipeline, test_bundle: TestBundle) -> None:
    token = test_bundle.token("fininfo:read", client_id="blocked-client")
    decision = await gateway.check(mcp_post(tool_call("get_quote"), token=token))
    assert isinstance(decision, Deny)
    assert decision.reason == "client_not_allowed"


async def test_upstream_required_scopes_apply_to_every_method(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18"},
    }
    token = test_bundle.token(audience="http://gateway.test.example/currenttime/mcp")
    decision = await gateway.check(mcp_post(initialize, token=token, path="/currenttime/mcp"))
    assert isinstance(decision, Deny)
    assert decision.required_scopes == ("time:read",)


async def test_api_key_is_accepted_and_stripped(gateway: CheckPipeline) -> None:
    decision = await gateway.check(
        mcp_post(tool_call("get_quote"), headers={"x-api-key": CI_BOT_KEY})
    )
    assert isinstance(decision, Allow)
    assert dict(decision.headers_to_set)["x-gateway-credential"] == "api_key"
    assert "x-api-key" in decision.headers_to_remove


async def test_unknown_api_key_is_401(gateway: CheckPipeline) -> None:
    decision = await gateway.check(mcp_post(tool_call("get_quote"), headers={"x-api-key": "nope"}))
    assert isinstance(decision, Deny)
    assert decision.reason == "unknown_api_key"


@pytest.mark.parametrize(
    ("request_kwargs", "reason"),
    [
        ({"query": "access_token=abc"}, "token_in_query"),
        ({"headers": {"x-api-key": CI_BOT_KEY}}, "multiple_credentials"),
    ],
)
async def test_ambiguous_credentials_are_400(
    gateway: CheckPipeline, test_bundle: TestBundle, request_kwargs: dict[str, Any], reason: str
) -> None:
    decision = await gateway.check(
        mcp_post(tool_call("get_quote"), token=test_bundle.token("fininfo:read"), **request_kwargs)
    )
    assert isinstance(decision, Deny)
    assert decision.kind is DenyKind.INVALID_REQUEST
    assert decision.reason == reason
    assert render_deny(decision).status == 400


async def test_two_authorization_headers_are_refused(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    token = test_bundle.token("fininfo:read")
    request = mcp_post(tool_call("get_quote"), token=token)
    request = HttpRequest(
        method=request.method,
        path=request.path,
        headers=request.headers,
        body=request.body,
        repeated_headers=frozenset({"authorization"}),
    )
    decision = await gateway.check(request)
    assert isinstance(decision, Deny)
    assert decision.reason == "multiple_authorization_headers"


async def test_bad_origin_is_403(gateway: CheckPipeline, test_bundle: TestBundle) -> None:
    decision = await gateway.check(
        mcp_post(
            tool_call("get_quote"),
            token=test_bundle.token("fininfo:read"),
            headers={"origin": "https://evil.example"},
        )
    )
    assert isinstance(decision, Deny)
    assert decision.kind is DenyKind.BAD_ORIGIN
    answer = render_deny(decision)
    assert answer.status == 403
    assert json.loads(answer.body)["id"] == 7  # echoed, as every other denial does


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "HEAD"])
@pytest.mark.parametrize("path", ["/fininfo/mcp", "/agents/helper/tasks/t1"])
async def test_a_body_is_refused_on_methods_that_carry_none(
    gateway: CheckPipeline, test_bundle: TestBundle, method: str, path: str
) -> None:
    token = test_bundle.token("fininfo:read")
    request = mcp_post(tool_call("place_trade"), token=token, path=path)
    decision = await gateway.check(
        HttpRequest(method=method, path=path, headers=request.headers, body=request.body)
    )
    assert isinstance(decision, Deny)
    assert decision.reason == "unexpected_body"
    assert render_deny(decision).status == 400


async def test_a_truncated_body_on_a_get_is_refused_too(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    decision = await gateway.check(
        HttpRequest(method="GET", path="/fininfo/mcp", headers={}, body=b"", body_truncated=True)
    )
    assert isinstance(decision, Deny)
    assert decision.reason == "unexpected_body"


async def test_a_get_without_a_body_is_not_refused_for_one(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    token = test_bundle.token("fininfo:read")
    decision = await gateway.check(
        HttpRequest(method="GET", path="/fininfo/mcp", headers={"authorization": f"Bearer {token}"})
    )
    assert decision.reason != "unexpected_body"


async def test_an_origin_that_only_lower_cases_into_an_allowed_one_is_refused(
    tmp_path: Path,
) -> None:
    # str.lower() turns the Kelvin sign into "k": a non-ASCII Origin must not lower-case
    # its way into the allowed http://kite.test.example.
    kite = write_test_bundle(tmp_path, gateway="http://kite.test.example")
    state = BundleState.from_bundle(kite.bundle)
    await state.jwt.start()
    gateway = CheckPipeline(state)
    token = kite.token("fininfo:read", audience="http://kite.test.example/fininfo/mcp")
    for origin, allowed in [
        ("http://kite.test.example", True),
        ("HTTP://KITE.TEST.EXAMPLE", True),  # ASCII case is not a different origin
        ("http://\u212aite.test.example", False),
    ]:
        decision = await gateway.check(
            mcp_post(tool_call("get_quote"), token=token, headers={"origin": origin})
        )
        assert isinstance(decision, Allow) is allowed, (origin, decision)


async def test_same_origin_as_the_resource_is_allowed(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    decision = await gateway.check(
        mcp_post(
            tool_call("get_quote"),
            token=test_bundle.token("fininfo:read"),
            headers={"origin": "http://gateway.test.example"},
        )
    )
    assert isinstance(decision, Allow)


async def test_batch_is_authorized_element_by_element(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    batch = [tool_call("get_quote", 1), tool_call("place_trade", 2)]
    token = test_bundle.token("fininfo:read")
    decision = await gateway.check(
        mcp_post(batch, token=token, headers={"mcp-protocol-version": "2025-03-26"})
    )
    assert isinstance(decision, Deny)
    assert decision.kind is DenyKind.INSUFFICIENT_SCOPE
    assert decision.request_id == 2


async def test_malformed_body_is_400_and_echoes_the_id(
    gateway: CheckPipeline, test_bundle: TestBundle
) -> None:
    body = {"jsonrpc": "2.0", "id": "abc", "method": "tools/call", "params": {"name": 5}}
    decision = await gateway.check(mcp_post(body, token=test_bundle.token("fininfo:read")))
    assert isinstance(decision, Deny)
    assert decision.kind is DenyKind.MALFORMED
    answer = render_deny(decision)
    assert answer.status == 400
    assert json.loads(answer.body)["id"] == "abc"
    assert json.loads(answer.body)["error"]["code"] == -32602


async def test_agent_card_is_public(gateway: CheckPipeline) -> None:
    decision = await gateway.check(
        HttpRequest(method="GET", path="/agents/helper/.well-known/agent-card.json")
    )
    assert isinstance(decision, Allow)
    assert decision.reason == "public"


@pytest.mark.parametrize("method", ["message/send", "SendMessage"])
async def test_a2a_send_message_needs_its_scope(
    gateway: CheckPipeline, test_bundle: TestBundle, method: str
) -> None:
    body = {"jsonrpc": "2.0", "id": "m1", "method": method, "params": {"message": {"parts": []}}}
    allowed = await gateway.check(
        mcp_post(
            body,
            path="/agents/helper/",
            token=test_bundle.token("agent:chat", audience=HELPER_RESOURCE),
        )
    )
    assert isinstance(allowed, Allow)
    assert allowed.rules == ("chat",)
    denied = await gateway.check(
        mcp_post(
            body, path="/agents/helper/", token=test_bundle.token("other", audience=HELPER_RESOURCE)
        )
    )
    assert isinstance(denied, Deny)
    assert denied.required_scopes == ("agent:chat",)
    assert json.loads(render_deny(denied).body)["id"] == "m1"


def test_every_denial_kind_has_one_row_in_the_answer_table() -> None:
    from policy_service.decisions.model import ANSWERS

    assert set(ANSWERS) == set(DenyKind)


async def test_a_failing_condition_that_decides_is_a_condition_error_with_its_why() -> None:
    from policy_service.identity.principal import CredentialKind, Principal
    from policy_service.pipeline import GivenPrincipal
    from policy_service.telemetry.audit_event import audit_event
    from policy_service.telemetry.facts import facts_of
    from policy_service.telemetry.record import CheckRecord

    finance = Path(__file__).parents[2] / "examples" / "finance" / "bundle.yaml"
    bob = Principal("bob", "corp", "trading-desk", frozenset({"fininfo:trade"}), CredentialKind.JWT)
    gateway = CheckPipeline(
        BundleState.from_bundle(load_bundle(finance)), identity=GivenPrincipal(bob)
    )
    # A quantity that is a string: the large-orders deny rule's comparison fails.
    request = mcp_post(
        tool_call("place_trade", arguments={"symbol": "ACME", "side": "buy", "quantity": "10"}),
        token="unused",
    )
    record = CheckRecord.new()
    decision = await gateway.check(request, record)
    assert isinstance(decision, Deny)
    assert (decision.reason, decision.rule) == ("condition_error", "large-orders")
    # The finance upstream answers policy denials as HTTP 200 + a JSON-RPC error.
    assert json.loads(render_deny(decision).body)["error"]["data"]["reason"] == "condition_error"
    event = audit_event(
        request, decision, record, facts_of(record), latency_seconds=0, trace_id="", span_id=""
    )
    assert event["reason"] == "condition_error"
    assert "overload" in event["condition_error"]  # names the operator and the types
    assert '"10"' not in json.dumps(event)  # the value itself is never in the why


async def test_a_session_refusal_is_a_404_even_where_denials_are_in_band(tmp_path: Path) -> None:
    from policy_service.identity.principal import CredentialKind, Principal
    from policy_service.pipeline import GivenPrincipal

    bundle = write_test_bundle(
        tmp_path, denial_style="jsonrpc", fininfo_responses="      sessions: {bind: true}\n"
    )
    alice = Principal("alice", "test-idp", "app", frozenset({"fininfo:read"}), CredentialKind.JWT)
    bob = Principal("bob", "test-idp", "app", frozenset({"fininfo:read"}), CredentialKind.JWT)
    state = BundleState.from_bundle(bundle.bundle)
    as_alice = CheckPipeline(state, identity=GivenPrincipal(alice))
    as_bob = CheckPipeline(state, identity=GivenPrincipal(bob), guard=as_alice.guard)
    await as_alice.guard.sessions.bind("fininfo", "s-1", alice, 60)
    request = mcp_post(tool_call("get_quote"), token="unused", headers={"mcp-session-id": "s-1"})

    assert isinstance(await as_alice.check(request), Allow)
    refused = await as_bob.check(request)
    assert isinstance(refused, Deny)
    assert refused.reason == "session_principal_mismatch"
    answer = render_deny(refused)
    # 404, never 200 + error: the client must drop the session and start a new one.
    assert answer.status == 404
    assert json.loads(answer.body)["error"]["data"]["reason"] == "session_principal_mismatch"
