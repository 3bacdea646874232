"""Rate limits through CheckPipeline.check: headers on allows, 429 and 503 answers, failure modes.

Buckets live in an InProcessStore driven by a FakeClock, so refill happens only when a test
advances it. Tokens are minted and verified on real time; that clock never moves here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from policy_service.decisions.model import Allow, Decision, Deny, DenyKind
from policy_service.decisions.render import render_deny
from policy_service.edge.envoy_out import to_check_response
from policy_service.pipeline import CheckPipeline
from policy_service.policy.limits import TakeResult
from policy_service.ratelimits.breaker import CircuitBreaker
from policy_service.ratelimits.bucket import BucketSpec
from policy_service.ratelimits.limiter import RateLimiter
from policy_service.ratelimits.store import BucketStore, InProcessStore, StoreUnavailableError
from policy_service.request.model import HttpRequest
from policy_service.state import BundleState
from policy_service.testing import FakeClock, tool_call_body
from policy_service.testing import mcp_request as mcp_post
from tests.support.bundles import HELPER_RESOURCE, TestBundle, write_test_bundle
from tests.support.checks import header_dict

V2025 = "2025-06-18"
V2026 = "2026-07-28"

PER_CLIENT = """\
  - name: per-client
    rate: 3/min
    key: [client]
    match: {upstreams: [fininfo], tools: ["*"]}
"""
PER_CLIENT_POLICY = '"per-client";q=3;w=60'


@dataclass
class Setup:
    gateway: CheckPipeline
    bundle: TestBundle
    clock: FakeClock


class FailingStore:
    """A store that never answers, as Redis does when it is down."""

    name = "failing"

    def __init__(self) -> None:
        self.calls = 0

    async def take(self, specs: Sequence[BucketSpec]) -> TakeResult:
        self.calls += 1
        raise StoreUnavailableError("connection", "ConnectionRefusedError")

    async def aclose(self) -> None:
        return None


async def make_setup(
    directory: Path,
    limits: str,
    *,
    store: BucketStore | None = None,
    clock: FakeClock | None = None,
) -> Setup:
    clock = clock or FakeClock()
    bundle = write_test_bundle(directory, limits=limits)
    state = BundleState.from_bundle(bundle.bundle)
    await state.jwt.start()
    breaker = CircuitBreaker(failure_threshold=3, open_seconds=5.0, clock=clock)
    limiter = RateLimiter(store or InProcessStore(clock), breaker)
    return Setup(CheckPipeline(state, limiter), bundle, clock)


@pytest.fixture
async def per_client(tmp_path: Path) -> Setup:
    return await make_setup(tmp_path, PER_CLIENT)


def tool_call(name: str, request_id: int | str = 7, *, version: str = V2025) -> dict[str, Any]:
    meta = {"io.modelcontextprotocol/protocolVersion": version} if version >= V2026 else None
    return tool_call_body(name, request_id, meta=meta)


def call_tool(
    name: str, *, token: str, request_id: int | str = 7, version: str = V2025
) -> HttpRequest:
    """A tools/call as a client of ``version`` sends it (2026-07-28 mirrors it in headers)."""
    mirrored = {"mcp-method": "tools/call", "mcp-name": name} if version >= V2026 else {}
    return mcp_post(
        tool_call(name, request_id, version=version), token=token, version=version, headers=mirrored
    )


def send_message(token: str, request_id: str = "m1") -> HttpRequest:
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "SendMessage",
        "params": {"message": {"parts": []}},
    }
    return HttpRequest(
        method="POST",
        path="/agents/helper/",
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
        body=json.dumps(body).encode(),
    )


def allowed(decision: Decision) -> Allow:
    assert isinstance(decision, Allow), decision
    return decision


def denied(decision: Decision, kind: DenyKind) -> Deny:
    assert isinstance(decision, Deny), decision
    assert decision.kind is kind, decision
    return decision


async def use_up_burst(setup: Setup, token: str, tool: str = "get_quote") -> None:
    for _ in range(3):
        allowed(await setup.gateway.check(call_tool(tool, token=token)))


# --- within budget -------------------------------------------------------------------------


async def test_burst_calls_are_allowed_with_ratelimit_headers(per_client: Setup) -> None:
    token = per_client.bundle.token("fininfo:read")
    seen = []
    for _ in range(3):
        decision = allowed(await per_client.gateway.check(call_tool("get_quote", token=token)))
        seen.append(dict(decision.response_headers))
    # 3 a minute: one token comes back every 20 s.
    assert seen == [
        {"ratelimit-policy": PER_CLIENT_POLICY, "ratelimit": '"per-client";r=2;t=20'},
        {"ratelimit-policy": PER_CLIENT_POLICY, "ratelimit": '"per-client";r=1;t=40'},
        {"ratelimit-policy": PER_CLIENT_POLICY, "ratelimit": '"per-client";r=0;t=60'},
    ]


async def test_ratelimit_headers_reach_envoy_as_response_headers(per_client: Setup) -> None:
    token = per_client.bundle.token("fininfo:read")
    decision = await per_client.gateway.check(call_tool("get_quote", token=token))
    response = to_check_response(decision)
    assert response.WhichOneof("http_response") == "ok_response"
    assert header_dict(response.ok_response.response_headers_to_add) == {
        "ratelimit-policy": PER_CLIENT_POLICY,
        "ratelimit": '"per-client";r=2;t=20',
    }
    # Rate-limit fields are for the client, not the upstream.
    assert "ratelimit" not in header_dict(response.ok_response.headers)


async def test_calls_outside_the_match_take_nothing_and_get_no_headers(
    per_client: Setup,
) -> None:
    token = per_client.bundle.token("fininfo:read")
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": V2025},
    }
    decision = allowed(await per_client.gateway.check(mcp_post(initialize, token=token)))
    assert decision.response_headers == ()
    first_tool = allowed(await per_client.gateway.check(call_tool("get_quote", token=token)))
    assert dict(first_tool.response_headers)["ratelimit"] == '"per-client";r=2;t=20'


async def test_each_client_has_its_own_bucket(per_client: Setup) -> None:
    await use_up_burst(per_client, per_client.bundle.token("fininfo:read", client_id="web-app"))
    other = per_client.bundle.token("fininfo:read", client_id="cli")
    decision = allowed(await per_client.gateway.check(call_tool("get_quote", token=other)))
    assert dict(decision.response_headers)["ratelimit"] == '"per-client";r=2;t=20'


# --- over the limit ------------------------------------------------------------------------


async def test_call_over_the_limit_is_a_429_with_retry_after_and_fields(
    per_client: Setup,
) -> None:
    token = per_client.bundle.token("fininfo:read")
    await use_up_burst(per_client, token)
    decision = denied(
        await per_client.gateway.check(call_tool("get_quote", token=token, request_id="q-4")),
        DenyKind.RATE_LIMITED,
    )
    answer = render_deny(decision)
    assert answer.status == 429
    assert answer.headers == (
        ("content-type", "application/json"),
        ("retry-after", "20"),
        ("ratelimit-policy", PER_CLIENT_POLICY),
        ("ratelimit", '"per-client";r=0;t=20'),
    )
    assert json.loads(answer.body) == {
        "jsonrpc": "2.0",
        "id": "q-4",
        "error": {
            "code": -32029,
            "message": "rate limit 'per-client' exceeded; retry in 20s",
            "data": {
                "reason": "rate_limited",
                "limit_name": "per-client",
                "scope": "client",
                "retry_after": 20,
                "limit": 3,
                "window": 60,
            },
        },
    }


async def test_429_reaches_envoy_as_a_denied_response(per_client: Setup) -> None:
    token = per_client.bundle.token("fininfo:read")
    await use_up_burst(per_client, token)
    response = to_check_response(
        await per_client.gateway.check(call_tool("get_quote", token=token))
    )
    assert response.denied_response.status.code == 429
    assert header_dict(response.denied_response.headers)["retry-after"] == "20"


@pytest.mark.parametrize(
    ("version", "code"),
    [("2025-03-26", -32029), (V2025, -32029), ("2025-11-25", -32029), (V2026, 429)],
)
async def test_rate_limit_code_follows_the_mcp_revision(
    per_client: Setup, version: str, code: int
) -> None:
    token = per_client.bundle.token("fininfo:read")
    for _ in range(3):
        allowed(
            await per_client.gateway.check(call_tool("get_quote", token=token, version=version))
        )
    decision = denied(
        await per_client.gateway.check(
            call_tool("get_quote", token=token, request_id=11, version=version)
        ),
        DenyKind.RATE_LIMITED,
    )
    body = json.loads(render_deny(decision).body)
    assert (body["id"], body["error"]["code"]) == (11, code)
    assert body["error"]["data"]["reason"] == "rate_limited"


async def test_a2a_call_over_the_limit_gets_code_429(tmp_path: Path) -> None:
    setup = await make_setup(
        tmp_path,
        "  - {name: helper-chat, rate: 1/min, key: [client], match: {upstreams: [helper]}}\n",
    )
    token = setup.bundle.token("agent:chat", audience=HELPER_RESOURCE)
    allowed(await setup.gateway.check(send_message(token, "m1")))
    decision = denied(await setup.gateway.check(send_message(token, "m2")), DenyKind.RATE_LIMITED)
    answer = render_deny(decision)
    assert answer.status == 429
    assert dict(answer.headers)["retry-after"] == "60"
    body = json.loads(answer.body)
    assert (body["id"], body["error"]["code"]) == ("m2", 429)
    assert body["error"]["data"]["limit_name"] == "helper-chat"


async def test_refused_by_policy_takes_no_token(per_client: Setup) -> None:
    token = per_client.bundle.token("fininfo:read")
    denied(
        await per_client.gateway.check(call_tool("place_trade", token=token)),
        DenyKind.INSUFFICIENT_SCOPE,
    )
    denied(
        await per_client.gateway.check(call_tool("halt_trading", token=token)), DenyKind.FORBIDDEN
    )
    decision = allowed(await per_client.gateway.check(call_tool("get_quote", token=token)))
    assert dict(decision.response_headers)["ratelimit"] == '"per-client";r=2;t=20'


async def test_rate_limited_call_takes_no_token(per_client: Setup) -> None:
    token = per_client.bundle.token("fininfo:read")
    await use_up_burst(per_client, token)
    for _ in range(5):
        denied(
            await per_client.gateway.check(call_tool("get_quote", token=token)),
            DenyKind.RATE_LIMITED,
        )
    per_client.clock.advance(20)
    decision = allowed(await per_client.gateway.check(call_tool("get_quote", token=token)))
    assert dict(decision.response_headers)["ratelimit"] == '"per-client";r=0;t=60'


async def test_call_is_allowed_again_once_the_bucket_refills(per_client: Setup) -> None:
    token = per_client.bundle.token("fininfo:read")
    await use_up_burst(per_client, token)
    per_client.clock.advance(19.5)
    denied(
        await per_client.gateway.check(call_tool("get_quote", token=token)), DenyKind.RATE_LIMITED
    )
    per_client.clock.advance(0.5)
    allowed(await per_client.gateway.check(call_tool("get_quote", token=token)))


async def test_buckets_keep_counting_across_a_bundle_reload(
    per_client: Setup, tmp_path: Path
) -> None:
    token = per_client.bundle.token("fininfo:read")
    await use_up_burst(per_client, token)
    reloaded_dir = tmp_path / "reloaded"
    reloaded_dir.mkdir()
    reloaded = write_test_bundle(reloaded_dir, key=per_client.bundle.key, limits=PER_CLIENT)
    state = BundleState.from_bundle(reloaded.bundle)
    await state.jwt.start()
    per_client.gateway.bundles.swap(state)
    denied(
        await per_client.gateway.check(call_tool("get_quote", token=token)), DenyKind.RATE_LIMITED
    )


# --- shadow limits -------------------------------------------------------------------------


async def test_shadow_limit_never_refuses_and_sends_no_headers(tmp_path: Path) -> None:
    setup = await make_setup(
        tmp_path,
        "  - {name: trial, rate: 1/min, key: [client], shadow: true,"
        " match: {upstreams: [fininfo]}}\n",
    )
    token = setup.bundle.token("fininfo:read")
    for _ in range(5):
        decision = allowed(await setup.gateway.check(call_tool("get_quote", token=token)))
        assert decision.response_headers == ()
    assert setup.gateway.limiter.stats.exceeded == 0
    assert setup.gateway.limiter.stats.checks == 5


async def test_shadow_limit_beside_an_enforced_one_is_not_shown(tmp_path: Path) -> None:
    setup = await make_setup(
        tmp_path,
        PER_CLIENT + "  - {name: trial, rate: 1/min, key: [client], shadow: true}\n",
    )
    token = setup.bundle.token("fininfo:read")
    for _ in range(2):
        decision = allowed(await setup.gateway.check(call_tool("get_quote", token=token)))
        assert dict(decision.response_headers)["ratelimit-policy"] == PER_CLIENT_POLICY


# --- the store is down ---------------------------------------------------------------------


async def test_fail_closed_limit_with_a_failing_store_is_a_503(tmp_path: Path) -> None:
    store = FailingStore()
    setup = await make_setup(
        tmp_path,
        "  - {name: strict, rate: 100/min, key: [client], on_store_failure: closed}\n",
        store=store,
    )
    token = setup.bundle.token("fininfo:read")
    decision = denied(
        await setup.gateway.check(call_tool("get_quote", token=token, request_id=5)),
        DenyKind.LIMIT_STORE_UNAVAILABLE,
    )
    answer = render_deny(decision)
    assert answer.status == 503
    assert answer.headers == (("content-type", "application/json"), ("retry-after", "1"))
    body = json.loads(answer.body)
    assert body["id"] == 5
    assert body["error"]["code"] == 503
    assert body["error"]["data"] == {"reason": "rate_limit_unavailable"}
    assert store.calls == 1


async def test_fail_closed_retry_after_follows_the_open_breaker(tmp_path: Path) -> None:
    store = FailingStore()
    setup = await make_setup(
        tmp_path,
        "  - {name: strict, rate: 100/min, key: [client], on_store_failure: closed}\n",
        store=store,
    )
    token = setup.bundle.token("fininfo:read")
    for _ in range(3):  # the third failure opens the breaker for 5 s
        denied(
            await setup.gateway.check(call_tool("get_quote", token=token)),
            DenyKind.LIMIT_STORE_UNAVAILABLE,
        )
    setup.clock.advance(1.5)
    decision = denied(
        await setup.gateway.check(call_tool("get_quote", token=token)),
        DenyKind.LIMIT_STORE_UNAVAILABLE,
    )
    assert dict(render_deny(decision).headers)["retry-after"] == "4"  # 3.5 s, rounded up
    assert store.calls == 3  # the open breaker kept the last check away from the store


async def test_fail_open_limit_with_a_failing_store_allows_without_headers(
    tmp_path: Path,
) -> None:
    store = FailingStore()
    setup = await make_setup(tmp_path, PER_CLIENT, store=store)
    token = setup.bundle.token("fininfo:read")
    for _ in range(5):  # beyond the burst: nothing is counted while the store is down
        decision = allowed(await setup.gateway.check(call_tool("get_quote", token=token)))
        assert decision.response_headers == ()
    assert setup.gateway.limiter.stats.failed_open == 5
    assert store.calls == 3  # then the breaker opened
