"""Which buckets a request takes from: limits compiled from a real bundle, keys by identity."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from policy_service.identity.principal import CredentialKind, Principal
from policy_service.policy.limits import CompiledLimit
from policy_service.ratelimits.keys import cached_claims_for, claims_for
from policy_service.request.model import CallTarget, TargetKind, call_targets
from tests.support.bundles import write_test_bundle

LIMITS = """\
  - {name: by-client, rate: 100/min, key: [client]}
  - {name: by-subject, rate: 100/min, key: [subject]}
  - {name: by-tenant, rate: 100/min, key: ["claim:tenant"]}
  - {name: by-upstream, rate: 100/min, key: [upstream]}
  - {name: by-tool, rate: 100/min, key: [tool]}
  - {name: by-method, rate: 100/min, key: [method]}
  - {name: everyone, rate: 100/min, key: [global]}
  - {name: client-tool, rate: 100/min, key: [client, tool]}
  - name: trades
    rate: 10/hour
    cost: 3
    key: [client]
    match: {upstreams: [fininfo], tools: [place_trade]}
  - name: helper-only
    rate: 10/min
    key: [client]
    match: {upstreams: [helper]}
"""
EVERY_LIMIT = {
    "by-client",
    "by-subject",
    "by-tenant",
    "by-upstream",
    "by-tool",
    "by-method",
    "everyone",
    "client-tool",
    "trades",
    "helper-only",
}
BUCKET_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*:(?:[0-9a-f]{32}|global)$")


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompiledLimit, ...]:
    directory: Path = tmp_path_factory.mktemp("limit-keys")
    compiled = write_test_bundle(directory, limits=LIMITS).bundle.limits
    assert {limit.name for limit in compiled} == EVERY_LIMIT
    return compiled


def principal(
    subject: str = "alice",
    client_id: str | None = "web-app",
    *,
    issuer: str = "test-idp",
    claims: Mapping[str, Any] | None = None,
) -> Principal:
    return Principal(
        subject=subject,
        issuer=issuer,
        client_id=client_id,
        scopes=frozenset({"fininfo:read"}),
        credential=CredentialKind.JWT,
        claims=dict(claims or {}),
    )


def tool(name: str, request_id: int = 1) -> CallTarget:
    return CallTarget(TargetKind.TOOL, name, "tools/call", request_id)


def method(name: str, request_id: int = 1) -> CallTarget:
    return CallTarget(TargetKind.METHOD, name, name, request_id)


def buckets(
    limits: Sequence[CompiledLimit],
    who: Principal,
    targets: Sequence[CallTarget],
    upstream: str = "fininfo",
) -> dict[str, list[tuple[str, int]]]:
    """Limit name -> [(bucket id, cost)] for every bucket the request takes from."""
    found: dict[str, list[tuple[str, int]]] = {}
    for claim in claims_for(limits, upstream, who, targets):
        found.setdefault(claim.limit.name, []).append((claim.key, claim.cost))
    return found


def bucket(
    limits: Sequence[CompiledLimit],
    name: str,
    who: Principal,
    target: CallTarget | None = None,
    upstream: str = "fininfo",
) -> str:
    """The one bucket of limit ``name`` a single call (or a call-less request) takes from."""
    found = buckets(limits, who, (target,) if target else (), upstream)
    [(bucket_id, _)] = found[name]
    return bucket_id


# --- what each key counts by ---------------------------------------------------------------


def test_two_clients_of_one_subject_get_different_client_buckets(
    limits: tuple[CompiledLimit, ...],
) -> None:
    web, cli = principal(client_id="web-app"), principal(client_id="cli")
    quote = tool("get_quote")
    assert bucket(limits, "by-client", web, quote) != bucket(limits, "by-client", cli, quote)
    assert bucket(limits, "by-subject", web, quote) == bucket(limits, "by-subject", cli, quote)


def test_same_client_two_tools_share_a_client_bucket_but_not_a_client_tool_bucket(
    limits: tuple[CompiledLimit, ...],
) -> None:
    who = principal()
    quote, symbols = tool("get_quote"), tool("list_symbols")
    assert bucket(limits, "by-client", who, quote) == bucket(limits, "by-client", who, symbols)
    assert bucket(limits, "client-tool", who, quote) != bucket(limits, "client-tool", who, symbols)
    assert bucket(limits, "by-tool", who, quote) != bucket(limits, "by-tool", who, symbols)


def test_tool_key_is_shared_across_clients(limits: tuple[CompiledLimit, ...]) -> None:
    quote = tool("get_quote")
    alice, bob = principal("alice", "web-app"), principal("bob", "cli")
    assert bucket(limits, "by-tool", alice, quote) == bucket(limits, "by-tool", bob, quote)
    assert bucket(limits, "client-tool", alice, quote) != bucket(limits, "client-tool", bob, quote)


def test_subject_key_keeps_two_issuers_alice_apart(limits: tuple[CompiledLimit, ...]) -> None:
    quote = tool("get_quote")
    ours, theirs = principal(issuer="test-idp"), principal(issuer="partner-idp")
    assert bucket(limits, "by-subject", ours, quote) != bucket(limits, "by-subject", theirs, quote)


def test_claim_key_counts_by_the_claim_value(limits: tuple[CompiledLimit, ...]) -> None:
    quote = tool("get_quote")
    acme_1 = principal("alice", "web-app", claims={"tenant": "acme"})
    acme_2 = principal("bob", "cli", claims={"tenant": "acme"})
    globex = principal("alice", "web-app", claims={"tenant": "globex"})
    assert bucket(limits, "by-tenant", acme_1, quote) == bucket(limits, "by-tenant", acme_2, quote)
    assert bucket(limits, "by-tenant", acme_1, quote) != bucket(limits, "by-tenant", globex, quote)


def test_tokens_without_the_claim_share_one_bucket(limits: tuple[CompiledLimit, ...]) -> None:
    quote = tool("get_quote")
    alice, bob = principal("alice", "web-app"), principal("bob", "cli")
    acme = principal("carol", "web-app", claims={"tenant": "acme"})
    missing = bucket(limits, "by-tenant", alice, quote)
    assert missing == bucket(limits, "by-tenant", bob, quote)
    assert missing != bucket(limits, "by-tenant", acme, quote)


def test_a_string_claim_never_shares_with_a_json_claim_of_the_same_text(
    limits: tuple[CompiledLimit, ...],
) -> None:
    quote = tool("get_quote")
    missing = principal()
    text_null = principal(claims={"tenant": "null"})
    number = principal(claims={"tenant": 7})
    text_seven = principal(claims={"tenant": "7"})
    assert bucket(limits, "by-tenant", missing, quote) != bucket(
        limits, "by-tenant", text_null, quote
    )
    assert bucket(limits, "by-tenant", number, quote) != bucket(
        limits, "by-tenant", text_seven, quote
    )


def test_client_key_falls_back_to_the_subject(limits: tuple[CompiledLimit, ...]) -> None:
    quote = tool("get_quote")
    no_client_1, no_client_2 = principal("alice", None), principal("alice", None)
    other_subject = principal("bob", None)
    assert bucket(limits, "by-client", no_client_1, quote) == bucket(
        limits, "by-client", no_client_2, quote
    )
    assert bucket(limits, "by-client", no_client_1, quote) != bucket(
        limits, "by-client", other_subject, quote
    )


def test_a_client_id_never_collides_with_a_subject_of_the_same_text(
    limits: tuple[CompiledLimit, ...],
) -> None:
    quote = tool("get_quote")
    client_named_alice = principal("someone", "alice")
    subject_alice_without_client = principal("alice", None)
    assert bucket(limits, "by-client", client_named_alice, quote) != bucket(
        limits, "by-client", subject_alice_without_client, quote
    )


def test_upstream_key_counts_per_upstream(limits: tuple[CompiledLimit, ...]) -> None:
    alice, bob = principal("alice", "web-app"), principal("bob", "cli")
    init = method("initialize")
    fininfo = bucket(limits, "by-upstream", alice, init, "fininfo")
    assert fininfo == bucket(limits, "by-upstream", bob, init, "fininfo")
    assert fininfo != bucket(limits, "by-upstream", alice, init, "currenttime")


def test_method_key_counts_per_method_not_per_tool(limits: tuple[CompiledLimit, ...]) -> None:
    who = principal()
    quote = bucket(limits, "by-method", who, tool("get_quote"))
    assert quote == bucket(limits, "by-method", who, tool("list_symbols"))
    assert quote != bucket(limits, "by-method", who, method("tools/list"))


def test_global_key_is_one_bucket_for_everybody(limits: tuple[CompiledLimit, ...]) -> None:
    alice = bucket(limits, "everyone", principal("alice", "web-app"), tool("get_quote"))
    bob = bucket(limits, "everyone", principal("bob", "cli"), method("initialize"), "currenttime")
    assert alice == bob == "everyone:global"


# --- which limits a call matches -----------------------------------------------------------


def test_match_upstreams_restricts_a_limit(limits: tuple[CompiledLimit, ...]) -> None:
    who = principal()
    send = CallTarget(TargetKind.A2A_METHOD, "SendMessage", "SendMessage", "m1")
    assert "helper-only" not in buckets(limits, who, [tool("get_quote")], "fininfo")
    assert "helper-only" in buckets(limits, who, [send], "helper")


def test_match_tools_restricts_a_limit(limits: tuple[CompiledLimit, ...]) -> None:
    who = principal()
    assert "trades" in buckets(limits, who, [tool("place_trade")])
    assert "trades" not in buckets(limits, who, [tool("get_quote")])
    assert "trades" not in buckets(limits, who, [method("tools/list")])
    # The same tool name on another upstream is outside the limit's upstreams.
    assert "trades" not in buckets(limits, who, [tool("place_trade")], "currenttime")


def test_a_limit_keyed_by_tool_does_not_apply_to_initialize(
    limits: tuple[CompiledLimit, ...],
) -> None:
    matched = set(buckets(limits, principal(), [method("initialize")]))
    assert matched == EVERY_LIMIT - {"by-tool", "client-tool", "trades", "helper-only"}


def test_a2a_calls_skip_limits_keyed_by_tool(limits: tuple[CompiledLimit, ...]) -> None:
    send = CallTarget(TargetKind.A2A_METHOD, "SendMessage", "SendMessage", "m1")
    matched = set(buckets(limits, principal(), [send], "helper"))
    assert matched == EVERY_LIMIT - {"by-tool", "client-tool", "trades"}


def test_a_request_without_calls_matches_only_limits_without_targets(
    limits: tuple[CompiledLimit, ...],
) -> None:
    targets = call_targets(None)
    assert targets == ()
    on_fininfo = set(buckets(limits, principal(), targets, "fininfo"))
    assert on_fininfo == EVERY_LIMIT - {"by-tool", "client-tool", "trades", "helper-only"}
    on_helper = set(buckets(limits, principal(), targets, "helper"))
    assert "helper-only" in on_helper  # restricted by upstream only, no call targets


# --- batches -------------------------------------------------------------------------------


def test_batch_hitting_one_bucket_twice_sums_the_cost(limits: tuple[CompiledLimit, ...]) -> None:
    batch = [tool("get_quote", 1), tool("get_quote", 2), tool("list_symbols", 3)]
    found = buckets(limits, principal(), batch)
    assert [cost for _, cost in found["by-client"]] == [3]
    assert [cost for _, cost in found["everyone"]] == [3]
    assert sorted(cost for _, cost in found["by-tool"]) == [1, 2]
    assert len({bucket_id for bucket_id, _ in found["client-tool"]}) == 2


def test_batch_cost_is_the_limit_cost_per_call(limits: tuple[CompiledLimit, ...]) -> None:
    batch = [tool("place_trade", 1), tool("get_quote", 2), tool("place_trade", 3)]
    found = buckets(limits, principal(), batch)
    assert [cost for _, cost in found["trades"]] == [6]  # two trades at cost 3


def test_each_bucket_is_claimed_once_in_bundle_order(limits: tuple[CompiledLimit, ...]) -> None:
    batch = [tool("get_quote", 1), tool("get_quote", 2)]
    claims = claims_for(limits, "fininfo", principal(), batch)
    assert len({claim.key for claim in claims}) == len(claims)
    order = [limit.name for limit in limits]
    names = [claim.limit.name for claim in claims]
    assert names == sorted(names, key=order.index)


# --- privacy -------------------------------------------------------------------------------


def test_bucket_ids_never_contain_identities(limits: tuple[CompiledLimit, ...]) -> None:
    who = principal(
        "alice@example.com",
        "client-7f3a-secret",
        claims={"tenant": "acme-corp"},
    )
    claims = claims_for(limits, "fininfo", who, [tool("place_trade"), method("tools/list")])
    assert len(claims) >= 8
    for claim in claims:
        assert BUCKET_ID.match(claim.key), claim.key
        for secret in ("alice", "example.com", "client-7f3a", "acme"):
            assert secret not in claim.key


# --- remembered on the principal ----------------------------------------------------------


def test_claims_are_remembered_per_principal_for_the_same_calls(
    limits: tuple[CompiledLimit, ...],
) -> None:
    caller = principal()
    first = cached_claims_for(limits, "fininfo", caller, [tool("get_quote", request_id=1)])
    # Another request of the same call (its id differs) reuses what the first one made.
    again = cached_claims_for(limits, "fininfo", caller, [tool("get_quote", request_id=2)])
    assert again is first
    assert first == claims_for(limits, "fininfo", caller, [tool("get_quote")])


def test_remembered_claims_follow_the_calls_the_upstream_and_the_bundle(
    limits: tuple[CompiledLimit, ...],
) -> None:
    caller = principal()
    cached_claims_for(limits, "fininfo", caller, [tool("get_quote")])
    for upstream, targets in (
        ("fininfo", [tool("place_trade")]),
        ("fininfo", [tool("get_quote"), tool("get_quote")]),
        ("fininfo", [method("tools/list")]),
        ("other", [tool("get_quote")]),
    ):
        got = cached_claims_for(limits, upstream, caller, targets)
        assert got == claims_for(limits, upstream, caller, targets), (upstream, targets)
    # A reload brings new limit objects (here: one fewer limit): never the old claims.
    reloaded = limits[1:]
    got = cached_claims_for(reloaded, "fininfo", caller, [tool("get_quote")])
    assert got == claims_for(reloaded, "fininfo", caller, [tool("get_quote")])
    assert {claim.limit.name for claim in got} <= {limit.name for limit in reloaded}


def test_a_principal_remembers_a_bounded_number_of_upstreams(
    limits: tuple[CompiledLimit, ...],
) -> None:
    caller = principal()
    for index in range(1000):
        cached_claims_for(limits, f"upstream-{index}", caller, [tool("get_quote")])
    assert len(caller.derived) <= 64
