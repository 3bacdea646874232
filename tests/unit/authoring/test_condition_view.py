"""explain's view of a condition: the values it read (sensitive ones redacted) and the part
that decided."""

from __future__ import annotations

from policy_service.authoring.condition_view import view_condition
from policy_service.policy.conditions import ConditionFailure, ConditionInputs, compile_condition
from policy_service.policy.model import BUILT_IN_REDACT_KEYS


def inputs(**args: object) -> ConditionInputs:
    return ConditionInputs(
        args=args,
        claims={"org": {"tier": "gold"}, "token": "eyJ-secret"},
        principal={"subject": "bob", "client_id": "", "issuer": "corp", "scopes": []},
        request={"method": "tools/call"},
    )


def test_the_values_read_are_shown_once_each_and_sensitive_ones_redacted() -> None:
    condition = compile_condition(
        'args.path.startsWith("/p") && claims["org"].tier == "gold" && '
        'claims.token != "" && args.path != "" && has(args.missing)'
    )
    view = view_condition(condition, inputs(path="/public/x"), BUILT_IN_REDACT_KEYS)
    assert view.values == (
        ("args.path", '"/public/x"'),
        ("claims.org.tier", '"gold"'),
        ("claims.token", "[redacted]"),
        ("args.missing", "(absent)"),
    )


def test_long_values_are_cut() -> None:
    view = view_condition(
        compile_condition('args.note == "x"'), inputs(note="y" * 500), BUILT_IN_REDACT_KEYS
    )
    ((_, shown),) = view.values
    assert len(shown) == 60
    assert shown.endswith("...")


def test_an_or_is_decided_by_its_first_true_part() -> None:
    condition = compile_condition("args.a == 1 || (args.b == 2 || args.c == 3) || args.d == 4")
    view = view_condition(condition, inputs(a=0, b=2, c=0, d=4), BUILT_IN_REDACT_KEYS)
    assert view.operator == "||"
    assert [part.source for part in view.parts] == [
        "args.a == 1",
        "(args.b == 2 || args.c == 3)",
        "args.d == 4",
    ]
    assert [part.result for part in view.parts] == [False, True, True]
    assert view.deciding == 1


def test_an_and_is_decided_by_its_first_part_that_is_not_true() -> None:
    condition = compile_condition('has(args.q) && args.q > 0 && args.q < "10"')
    view = view_condition(condition, inputs(q=5), BUILT_IN_REDACT_KEYS)
    assert view.operator == "&&"
    assert view.parts[0].result is True
    assert view.parts[1].result is True
    assert isinstance(view.parts[2].result, ConditionFailure)
    assert view.deciding == 2


def test_operators_inside_strings_do_not_split() -> None:
    view = view_condition(
        compile_condition("args.s == \"a || b\" && args.t == 'c && d'"),
        inputs(s="a || b", t="c && d"),
        BUILT_IN_REDACT_KEYS,
    )
    assert [part.source for part in view.parts] == ['args.s == "a || b"', "args.t == 'c && d'"]
    assert view.deciding is None


def test_a_single_comparison_has_no_parts() -> None:
    view = view_condition(compile_condition("args.q > 1"), inputs(q=2), BUILT_IN_REDACT_KEYS)
    assert (view.operator, view.parts, view.deciding) == (None, (), None)
