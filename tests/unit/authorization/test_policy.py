"""authorization.policy.authorize: the rule walk, called directly with a parsed request.

The upstreams are the test bundle's (tests/support/bundles.py): fininfo's rules are, in order,
``session`` (MCP housekeeping methods), ``trading-off-hours`` (deny ``halt_*``), ``trade``
(``place_trade`` with ``fininfo:trade``) and ``read`` (``get_quote``, ``list_symbols``,
``fin://*``, ``summarize_position`` with ``fininfo:read``), and its client deny list holds
``blocked-client``; currenttime needs ``time:read`` for everything; helper is an A2A agent
whose ``chat`` rule needs ``agent:chat``. Where a test needs rules the bundle has not got, it
swaps fininfo's rules for its own (``with_rules``) and shows them in the test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from policy_service.authorization.policy import (
    Granted,
    RefusalReason,
    Refused,
    RuleStep,
    authorize,
)
from policy_service.identity.principal import CredentialKind, Principal
from policy_service.policy.conditions import ConditionFailure, compile_condition
from policy_service.policy.model import (
    ClientFilter,
    CompiledBundle,
    CompiledRule,
    Effect,
    UpstreamPolicy,
)
from policy_service.policy.targets import CallTargets
from policy_service.request.model import (
    A2aBinding,
    A2aRequest,
    CallKind,
    CallTarget,
    HttpRequest,
    JsonRpcCall,
    JsonRpcId,
    McpRequest,
    TargetKind,
)
from tests.support.bundles import write_test_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> CompiledBundle:
    # Compiled policies are frozen, so one bundle serves every test in any order.
    return write_test_bundle(tmp_path_factory.mktemp("policy")).bundle


@pytest.fixture
def fininfo(bundle: CompiledBundle) -> UpstreamPolicy:
    return bundle.by_name["fininfo"]


@pytest.fixture
def currenttime(bundle: CompiledBundle) -> UpstreamPolicy:
    return bundle.by_name["currenttime"]


@pytest.fixture
def helper(bundle: CompiledBundle) -> UpstreamPolicy:
    return bundle.by_name["helper"]


def caller(
    *scopes: str,
    subject: str = "alice",
    client_id: str | None = "ide",
    claims: Mapping[str, Any] | None = None,
) -> Principal:
    return Principal(
        subject=subject,
        issuer="test-idp",
        client_id=client_id,
        scopes=frozenset(scopes),
        credential=CredentialKind.JWT,
        claims=dict(claims or {}),
    )


def tool(name: str, request_id: JsonRpcId = 1, **arguments: Any) -> JsonRpcCall:
    return JsonRpcCall(CallKind.TOOL, "tools/call", name, request_id, arguments)


def method(name: str, request_id: JsonRpcId = 1) -> JsonRpcCall:
    return JsonRpcCall(CallKind.METHOD, name, None, request_id)


def response(request_id: JsonRpcId) -> JsonRpcCall:
    return JsonRpcCall(CallKind.RESPONSE, None, None, request_id)


def mcp(*calls: JsonRpcCall) -> McpRequest:
    """One message, or a batch (2025-03-26, the revision that has batches) of several."""
    if len(calls) == 1:
        return McpRequest("2025-06-18", calls)
    return McpRequest("2025-03-26", calls, is_batch=True)


def a2a(name: str, request_id: JsonRpcId = "task-1") -> A2aRequest:
    return A2aRequest(name, A2aBinding.JSONRPC, request_id)


ANY_CLIENT = ClientFilter()


def rule(
    name: str,
    *,
    tools: tuple[str, ...] = (),
    methods: tuple[str, ...] = (),
    scopes: tuple[str, ...] = (),
    effect: Effect = Effect.ALLOW,
    when: str | None = None,
    clients: ClientFilter = ANY_CLIENT,
    dry_run: bool = False,
) -> CompiledRule:
    return CompiledRule(
        name=name,
        targets=CallTargets.compile(tools=tools, methods=methods),
        scopes=frozenset(scopes),
        clients=clients,
        effect=effect,
        condition=None if when is None else compile_condition(when),
        dry_run=dry_run,
    )


def with_rules(upstream: UpstreamPolicy, *rules: CompiledRule, **changes: Any) -> UpstreamPolicy:
    """``upstream`` with these rules; dry-run ones are left out of the enforced ones, as the
    bundle compiler leaves them out."""
    return replace(
        upstream,
        rules=rules,
        enforced_rules=tuple(r for r in rules if not r.dry_run),
        dry_run_rules=frozenset(r.name for r in rules if r.dry_run),
        **changes,
    )


# --- allow, deny, first match, default deny -------------------------------------------------


def test_an_allow_rule_grants_the_call_and_is_named_with_the_call_it_decided(
    fininfo: UpstreamPolicy,
) -> None:
    outcome = authorize(fininfo, caller("fininfo:read"), mcp(tool("get_quote", 7, symbol="ACME")))

    assert outcome == Granted(
        rules=("read",),
        targets=(CallTarget(TargetKind.TOOL, "get_quote", "tools/call", 7, {"symbol": "ACME"}),),
    )


def test_a_call_that_no_rule_matches_is_refused_by_default(fininfo: UpstreamPolicy) -> None:
    outcome = authorize(fininfo, caller("fininfo:read", "fininfo:trade"), mcp(tool("wire", 7)))

    assert outcome == Refused(RefusalReason.NO_MATCHING_RULE, rule=None, request_id=7)


def test_a_deny_rule_refuses_a_caller_with_every_scope(fininfo: UpstreamPolicy) -> None:
    outcome = authorize(
        fininfo, caller("fininfo:read", "fininfo:trade"), mcp(tool("halt_trading", 7))
    )

    assert outcome == Refused(RefusalReason.DENIED_BY_RULE, rule="trading-off-hours", request_id=7)


def test_a_method_is_matched_by_a_methods_rule(fininfo: UpstreamPolicy) -> None:
    outcome = authorize(fininfo, caller(), mcp(method("tools/list", 3)))

    assert outcome == Granted(
        ("session",), (CallTarget(TargetKind.METHOD, "tools/list", "tools/list", 3),)
    )


def test_a_deny_rule_listed_before_an_allow_rule_for_the_same_call_refuses(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(
        fininfo,
        rule("no-trades", tools=("place_trade",), effect=Effect.DENY),
        rule("trades", tools=("place_*",)),
    )

    outcome = authorize(upstream, caller(), mcp(tool("place_trade", 7)))

    assert outcome == Refused(RefusalReason.DENIED_BY_RULE, rule="no-trades", request_id=7)


def test_an_allow_rule_listed_before_a_deny_rule_for_the_same_call_grants(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(
        fininfo,
        rule("trades", tools=("place_*",)),
        rule("no-trades", tools=("place_trade",), effect=Effect.DENY),
    )

    outcome = authorize(upstream, caller(), mcp(tool("place_trade", 7)))

    assert isinstance(outcome, Granted), outcome
    assert outcome.rules == ("trades",)


# --- client allow and deny lists -------------------------------------------------------------


@pytest.mark.parametrize(
    "who",
    [
        caller("fininfo:read", client_id="blocked-client"),
        caller("fininfo:read", subject="blocked-client"),
    ],
    ids=["by-client-id", "by-subject"],
)
def test_the_upstreams_deny_list_refuses_a_caller_before_any_rule(
    fininfo: UpstreamPolicy, who: Principal
) -> None:
    outcome = authorize(fininfo, who, mcp(tool("get_quote", 7)))

    assert outcome == Refused(RefusalReason.CLIENT_NOT_ALLOWED, rule=None, request_id=7)


def test_the_upstreams_deny_list_applies_to_calls_no_rule_would_match_too(
    fininfo: UpstreamPolicy,
) -> None:
    outcome = authorize(fininfo, caller(client_id="blocked-client"), mcp(tool("wire", 7)))

    assert outcome == Refused(RefusalReason.CLIENT_NOT_ALLOWED, request_id=7)


def test_the_upstreams_deny_list_applies_to_requests_without_calls(
    fininfo: UpstreamPolicy,
) -> None:
    assert authorize(fininfo, caller(client_id="blocked-client"), None) == Refused(
        RefusalReason.CLIENT_NOT_ALLOWED
    )


def test_the_upstreams_allow_list_admits_only_the_clients_it_names(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = replace(fininfo, clients=ClientFilter(allow=frozenset({"ide"})))
    request = mcp(tool("get_quote", 7))

    admitted = authorize(upstream, caller("fininfo:read", client_id="ide"), request)
    refused = authorize(upstream, caller("fininfo:read", client_id="cli"), request)

    assert isinstance(admitted, Granted), admitted
    assert admitted.rules == ("read",)
    assert refused == Refused(RefusalReason.CLIENT_NOT_ALLOWED, rule=None, request_id=7)


def test_a_rules_allow_list_refuses_other_clients_instead_of_falling_through(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(
        fininfo,
        rule("ops-only", tools=("restart",), clients=ClientFilter(allow=frozenset({"ops"}))),
        rule("anyone", tools=("*",)),
    )

    assert authorize(upstream, caller(client_id="ops"), mcp(tool("restart", 7))) == Granted(
        ("ops-only",), (CallTarget(TargetKind.TOOL, "restart", "tools/call", 7, {}),)
    )
    assert authorize(upstream, caller(client_id="ide"), mcp(tool("restart", 7))) == Refused(
        RefusalReason.CLIENT_NOT_ALLOWED, rule="ops-only", request_id=7
    )


def test_a_rules_deny_list_refuses_the_clients_it_names(fininfo: UpstreamPolicy) -> None:
    upstream = with_rules(
        fininfo, rule("quotes", tools=("get_quote",), clients=ClientFilter(deny=frozenset({"cli"})))
    )

    outcome = authorize(upstream, caller(client_id="cli"), mcp(tool("get_quote", 7)))

    assert outcome == Refused(RefusalReason.CLIENT_NOT_ALLOWED, rule="quotes", request_id=7)


# --- scopes ----------------------------------------------------------------------------------


def test_a_missing_rule_scope_is_refused_naming_the_rule_and_the_scope(
    fininfo: UpstreamPolicy,
) -> None:
    outcome = authorize(fininfo, caller("fininfo:read"), mcp(tool("place_trade", 7)))

    assert outcome == Refused(
        RefusalReason.INSUFFICIENT_SCOPE,
        rule="trade",
        required_scopes=("fininfo:trade",),
        missing_scopes=("fininfo:trade",),
        request_id=7,
    )


def test_the_upstreams_required_scopes_apply_to_every_call(currenttime: UpstreamPolicy) -> None:
    request = mcp(method("tools/list", 4))

    assert authorize(currenttime, caller(), request) == Refused(
        RefusalReason.INSUFFICIENT_SCOPE,
        rule=None,
        required_scopes=("time:read",),
        missing_scopes=("time:read",),
        request_id=4,
    )
    assert authorize(currenttime, caller("time:read"), request) == Granted(
        ("currenttime#0",), (CallTarget(TargetKind.METHOD, "tools/list", "tools/list", 4),)
    )


def test_upstream_and_rule_scopes_are_required_together_and_all_named(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(
        fininfo,
        rule("quotes", tools=("get_quote",), scopes=("quotes:read",)),
        required_scopes=frozenset({"mcp:use"}),
    )
    request = mcp(tool("get_quote", 7))

    lacks_the_upstreams = authorize(upstream, caller("quotes:read"), request)
    lacks_the_rules = authorize(upstream, caller("mcp:use"), request)
    lacks_both = authorize(upstream, caller(), request)

    assert lacks_the_upstreams == Refused(
        RefusalReason.INSUFFICIENT_SCOPE,
        rule=None,  # the rule's own scopes are held: no rule is short
        required_scopes=("mcp:use", "quotes:read"),
        missing_scopes=("mcp:use",),
        request_id=7,
    )
    assert lacks_the_rules == Refused(
        RefusalReason.INSUFFICIENT_SCOPE,
        rule="quotes",
        required_scopes=("mcp:use", "quotes:read"),
        missing_scopes=("quotes:read",),
        request_id=7,
    )
    assert isinstance(lacks_both, Refused)
    assert lacks_both.missing_scopes == ("mcp:use", "quotes:read")
    assert isinstance(authorize(upstream, caller("mcp:use", "quotes:read"), request), Granted)


def test_a_request_without_calls_needs_only_the_upstreams_checks(
    fininfo: UpstreamPolicy, currenttime: UpstreamPolicy
) -> None:
    stream = McpRequest("2025-06-18", calls=())  # an MCP GET stream or DELETE

    assert authorize(fininfo, caller(), stream) == Granted(rules=(), targets=())
    assert authorize(fininfo, caller(), None) == Granted(rules=(), targets=())
    assert authorize(currenttime, caller(), None) == Refused(
        RefusalReason.INSUFFICIENT_SCOPE,
        required_scopes=("time:read",),
        missing_scopes=("time:read",),
    )


def test_a_response_the_client_posts_back_is_not_a_call_to_decide(
    fininfo: UpstreamPolicy,
) -> None:
    outcome = authorize(fininfo, caller(), McpRequest("2025-06-18", (response(5),)))

    assert outcome == Granted(rules=(), targets=())


# --- batches ---------------------------------------------------------------------------------


def test_a_batch_is_granted_only_when_every_element_is(fininfo: UpstreamPolicy) -> None:
    batch = mcp(tool("get_quote", 1), method("tools/list", 2), tool("place_trade", 3))

    outcome = authorize(fininfo, caller("fininfo:read", "fininfo:trade"), batch)

    assert isinstance(outcome, Granted)
    assert outcome.rules == ("read", "session", "trade")
    assert [target.request_id for target in outcome.targets] == [1, 2, 3]


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (tool("wire", 2), Refused(RefusalReason.NO_MATCHING_RULE, request_id=2)),
        (
            tool("halt_trading", 2),
            Refused(RefusalReason.DENIED_BY_RULE, "trading-off-hours", request_id=2),
        ),
    ],
    ids=["no-rule", "deny-rule"],
)
def test_one_refused_element_refuses_the_batch_with_its_id(
    fininfo: UpstreamPolicy, second: JsonRpcCall, expected: Refused
) -> None:
    outcome = authorize(fininfo, caller("fininfo:read"), mcp(tool("get_quote", 1), second))

    assert outcome == expected


def test_missing_scopes_across_a_batch_are_named_at_once_with_the_first_short_element(
    fininfo: UpstreamPolicy,
) -> None:
    batch = mcp(method("tools/list", 1), tool("place_trade", 2), tool("get_quote", 3))

    outcome = authorize(fininfo, caller(), batch)

    assert outcome == Refused(
        RefusalReason.INSUFFICIENT_SCOPE,
        rule="trade",
        required_scopes=("fininfo:read", "fininfo:trade"),
        missing_scopes=("fininfo:read", "fininfo:trade"),
        request_id=2,
    )


def test_a_rule_refusal_later_in_a_batch_outranks_missing_scopes_earlier(
    fininfo: UpstreamPolicy,
) -> None:
    batch = mcp(tool("place_trade", 1), tool("halt_trading", 2))

    outcome = authorize(fininfo, caller("fininfo:read"), batch)

    assert outcome == Refused(RefusalReason.DENIED_BY_RULE, "trading-off-hours", request_id=2)


# --- A2A -------------------------------------------------------------------------------------


def test_an_a2a_method_is_granted_by_its_rule(helper: UpstreamPolicy) -> None:
    outcome = authorize(helper, caller("agent:chat"), a2a("SendMessage", "task-9"))

    assert outcome == Granted(
        ("chat",),
        (CallTarget(TargetKind.A2A_METHOD, "SendMessage", "SendMessage", "task-9"),),
    )


def test_an_a2a_method_without_the_rules_scope_is_refused_with_the_request_id(
    helper: UpstreamPolicy,
) -> None:
    outcome = authorize(helper, caller(), a2a("GetTask", "task-9"))

    assert outcome == Refused(
        RefusalReason.INSUFFICIENT_SCOPE,
        rule="chat",
        required_scopes=("agent:chat",),
        missing_scopes=("agent:chat",),
        request_id="task-9",
    )


def test_an_a2a_method_no_rule_names_is_refused_by_default(helper: UpstreamPolicy) -> None:
    outcome = authorize(helper, caller("agent:chat"), a2a("ListTasks", "task-9"))

    assert outcome == Refused(RefusalReason.NO_MATCHING_RULE, request_id="task-9")


def test_mcp_rules_never_match_an_a2a_method_of_the_same_name(fininfo: UpstreamPolicy) -> None:
    upstream = with_rules(fininfo, rule("send", methods=("SendMessage",)))

    outcome = authorize(upstream, caller(), a2a("SendMessage"))

    assert outcome == Refused(RefusalReason.NO_MATCHING_RULE, request_id="task-1")


# --- conditions (`when:`) --------------------------------------------------------------------

SMALL_ORDERS = "args.quantity <= 100"  # fails to evaluate when there is no quantity


def test_an_allow_rule_whose_condition_holds_grants(fininfo: UpstreamPolicy) -> None:
    upstream = with_rules(fininfo, rule("small", tools=("place_trade",), when=SMALL_ORDERS))

    outcome = authorize(upstream, caller(), mcp(tool("place_trade", 7, quantity=5)))

    assert isinstance(outcome, Granted)
    assert outcome.rules == ("small",)


def test_an_allow_rule_kept_out_by_its_condition_is_named_as_condition_not_met(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(fininfo, rule("small", tools=("place_trade",), when=SMALL_ORDERS))

    outcome = authorize(upstream, caller(), mcp(tool("place_trade", 7, quantity=5000)))

    assert outcome == Refused(RefusalReason.CONDITION_NOT_MET, rule="small", request_id=7)


def test_an_allow_rule_kept_out_by_a_failing_condition_is_a_condition_error(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(fininfo, rule("small", tools=("place_trade",), when=SMALL_ORDERS))

    outcome = authorize(upstream, caller(), mcp(tool("place_trade", 7)))

    assert isinstance(outcome, Refused)
    assert (outcome.reason, outcome.rule, outcome.request_id) == (
        RefusalReason.CONDITION_ERROR,
        "small",
        7,
    )
    # Why it failed names the key, never a value.
    assert outcome.condition_failure is not None
    assert "quantity" in outcome.condition_failure


def test_condition_not_met_names_the_first_allow_rule_held_back(fininfo: UpstreamPolicy) -> None:
    upstream = with_rules(
        fininfo,
        rule("small", tools=("place_trade",), when=SMALL_ORDERS),
        rule("desk", tools=("place_trade",), when='claims.team == "desk"'),
    )

    outcome = authorize(upstream, caller(), mcp(tool("place_trade", 7, quantity=5000)))

    assert outcome == Refused(RefusalReason.CONDITION_NOT_MET, rule="small", request_id=7)


def test_a_call_an_allow_rules_condition_keeps_out_goes_on_to_the_next_rule(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(
        fininfo,
        rule("small", tools=("place_trade",), when=SMALL_ORDERS),
        rule("desk", tools=("place_trade",), scopes=("fininfo:trade",)),
    )

    outcome = authorize(
        upstream, caller("fininfo:trade"), mcp(tool("place_trade", 7, quantity=5000))
    )

    assert isinstance(outcome, Granted)
    assert outcome.rules == ("desk",)


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"quantity": 5000}, RefusalReason.DENIED_BY_RULE),
        ({}, RefusalReason.CONDITION_ERROR),  # it refuses too, and says why it did
    ],
    ids=["condition-true", "condition-fails"],
)
def test_a_deny_rule_refuses_when_its_condition_holds_or_fails(
    fininfo: UpstreamPolicy, arguments: dict[str, Any], reason: RefusalReason
) -> None:
    upstream = with_rules(
        fininfo,
        rule("large", tools=("place_trade",), effect=Effect.DENY, when="!(args.quantity <= 100)"),
        rule("trade", tools=("place_trade",)),
    )

    outcome = authorize(upstream, caller(), mcp(tool("place_trade", 7, **arguments)))

    assert isinstance(outcome, Refused)
    assert (outcome.reason, outcome.rule, outcome.request_id) == (reason, "large", 7)


def test_a_deny_rule_whose_condition_is_false_lets_the_next_rule_decide(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(
        fininfo,
        rule("large", tools=("place_trade",), effect=Effect.DENY, when="args.quantity > 100"),
        rule("trade", tools=("place_trade",)),
    )

    outcome = authorize(upstream, caller(), mcp(tool("place_trade", 7, quantity=5)))

    assert isinstance(outcome, Granted)
    assert outcome.rules == ("trade",)


def test_a_deny_rule_kept_out_by_its_condition_is_not_named_when_nothing_else_matches(
    fininfo: UpstreamPolicy,
) -> None:
    # condition_not_met names an allow rule the caller could still satisfy; a deny rule that
    # did not fire tells the caller nothing useful, so the refusal is plain default deny.
    upstream = with_rules(
        fininfo,
        rule("large", tools=("place_trade",), effect=Effect.DENY, when="args.quantity > 100"),
    )

    outcome = authorize(upstream, caller(), mcp(tool("place_trade", 7, quantity=5)))

    assert outcome == Refused(RefusalReason.NO_MATCHING_RULE, rule=None, request_id=7)


def test_conditions_are_evaluated_for_each_element_of_a_batch(fininfo: UpstreamPolicy) -> None:
    upstream = with_rules(fininfo, rule("small", tools=("place_trade",), when=SMALL_ORDERS))
    batch = mcp(tool("place_trade", 1, quantity=5), tool("place_trade", 2, quantity=5000))

    outcome = authorize(upstream, caller(), batch)

    assert outcome == Refused(RefusalReason.CONDITION_NOT_MET, rule="small", request_id=2)


@pytest.mark.parametrize(
    "when",
    [
        'args.symbol == "ACME"',
        'claims.team == "desk"',
        'principal.subject == "alice"',
        'principal.client_id == "ide"',
        'principal.issuer == "test-idp"',
        'principal.credential == "jwt"',
        'principal.scopes == ["a:read", "b:read"]',  # sorted
        'request.upstream == "fininfo"',
        'request.protocol == "mcp"',
        'request.method == "tools/call"',
        'request.target == "get_quote"',
        'request.http_method == "PUT"',
        'request.path == "/fininfo/mcp"',
    ],
)
def test_a_condition_reads_the_call_the_caller_and_the_http_request(
    fininfo: UpstreamPolicy, when: str
) -> None:
    upstream = with_rules(fininfo, rule("checked", tools=("get_quote",), when=when))
    who = caller("b:read", "a:read", claims={"team": "desk"})
    http = HttpRequest(method="PUT", path="/fininfo/mcp")

    outcome = authorize(upstream, who, mcp(tool("get_quote", 7, symbol="ACME")), http=http)

    assert isinstance(outcome, Granted), outcome


def test_without_the_http_request_a_condition_sees_a_post_with_no_path(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(
        fininfo,
        rule(
            "checked",
            tools=("get_quote",),
            when='request.http_method == "POST" && request.path == ""',
        ),
    )

    outcome = authorize(upstream, caller(), mcp(tool("get_quote", 7)))

    assert isinstance(outcome, Granted), outcome


def test_an_api_key_callers_missing_client_id_reads_as_empty_in_a_condition(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(
        fininfo, rule("checked", tools=("get_quote",), when='principal.client_id == ""')
    )

    outcome = authorize(upstream, caller(client_id=None), mcp(tool("get_quote", 7)))

    assert isinstance(outcome, Granted), outcome


# --- dry run ---------------------------------------------------------------------------------


def test_dry_run_rules_are_not_enforced_but_decide_when_passed_as_the_rules(
    fininfo: UpstreamPolicy,
) -> None:
    upstream = with_rules(
        fininfo,
        rule("no-quotes", tools=("get_quote",), effect=Effect.DENY, dry_run=True),
        rule("read", tools=("get_quote",), scopes=("fininfo:read",)),
    )
    request = mcp(tool("get_quote", 7))

    enforced = authorize(upstream, caller("fininfo:read"), request)
    would = authorize(upstream, caller("fininfo:read"), request, rules=upstream.rules)

    assert isinstance(enforced, Granted)
    assert enforced.rules == ("read",)
    assert would == Refused(RefusalReason.DENIED_BY_RULE, rule="no-quotes", request_id=7)


# --- explain's steps -------------------------------------------------------------------------


def test_steps_record_how_each_rule_fared_up_to_the_deciding_one(
    fininfo: UpstreamPolicy,
) -> None:
    quotes = rule("quotes", tools=("get_quote",))
    small = rule("small", tools=("place_trade",), when=SMALL_ORDERS)
    large = rule("large", tools=("place_trade",), effect=Effect.DENY, when="args.quantity > 100")
    upstream = with_rules(fininfo, quotes, small, large, rule("trade", tools=("place_trade",)))
    call = tool("place_trade", 7, price=10)
    steps: list[tuple[CallTarget, RuleStep]] = []

    outcome = authorize(upstream, caller(), mcp(call), steps=steps)

    no_quantity = ConditionFailure("no such key 'quantity'")
    target = CallTarget(TargetKind.TOOL, "place_trade", "tools/call", 7, {"price": 10})
    assert outcome == Refused(
        RefusalReason.CONDITION_ERROR,
        rule="large",
        request_id=7,
        condition_failure=no_quantity.reason,
    )
    assert steps == [
        (target, RuleStep(quotes, target_matched=False)),
        (target, RuleStep(small, target_matched=True, condition=no_quantity, applies=False)),
        (target, RuleStep(large, target_matched=True, condition=no_quantity, applies=True)),
    ]
