"""Rule conditions (CEL): what compiles, what a condition evaluates to, and what failures say."""

from __future__ import annotations

import threading
import types
from typing import Any

import pytest

from policy_service.policy.conditions import (
    CONDITION_VARIABLES,
    MAX_CONDITION_LENGTH,
    Condition,
    ConditionFailure,
    ConditionInputs,
    ConditionSyntaxError,
    compile_condition,
)

SECRET = "s3cr3t-value"


def inputs(
    args: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    principal: dict[str, Any] | None = None,
    request: dict[str, Any] | None = None,
) -> ConditionInputs:
    return ConditionInputs(
        args={"path": "/public/readme.md", "items": [1, 2, 3]} if args is None else args,
        claims={"sub": "user-1", "org": {"id": "acme", "tier": "gold"}, "groups": ["eng"]}
        if claims is None
        else claims,
        principal={
            "subject": "user-1",
            "client_id": "ide",
            "issuer": "corp-idp",
            "credential": "jwt",
            "scopes": ["fininfo:read", "admin"],
        }
        if principal is None
        else principal,
        request={
            "upstream": "fininfo",
            "protocol": "mcp",
            "method": "tools/call",
            "target": "read_file",
            "http_method": "POST",
            "path": "/fininfo/mcp",
        }
        if request is None
        else request,
    )


def evaluate(source: str, given: ConditionInputs | None = None) -> bool | ConditionFailure:
    return compile_condition(source).evaluate(inputs() if given is None else given)


def syntax_error(source: str) -> str:
    with pytest.raises(ConditionSyntaxError) as raised:
        compile_condition(source)
    return raised.value.message


# --- what evaluates to what ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('args.path.startsWith("/public/")', True),
        ('args.path.startsWith("/private/")', False),
        ('args.path.endsWith(".md")', True),
        ('args.path.contains("..")', False),
        ('args.path.matches("^/public/[a-z]+\\\\.md$")', True),
        ('args.path.matches("^/PUBLIC/")', False),
        ("size(args.path) == 17", True),
        ('"/public/" + "readme.md" == args.path', True),
        ('"admin" in principal.scopes', True),
        ('"root" in principal.scopes', False),
        ('"tier" in claims.org', True),
        ('claims.org.tier == "gold"', True),
        ('claims["org"]["id"] == "acme"', True),
        ("has(args.path)", True),
        ("has(args.mode)", False),
        ('has(args.mode) && args.mode == "w"', False),
        ('!has(args.mode) || args.mode == "r"', True),
        ("args.items.all(x, x > 0)", True),
        ("args.items.exists(x, x > 2)", True),
        ("args.items.exists_one(x, x > 2)", True),
        ("args.items.filter(x, x > 1).size() == 2", True),
        ('claims.groups.exists(g, g.startsWith("e"))', True),
        ('request.protocol == "mcp" && request.target == "read_file"', True),
        ('principal.credential == "jwt" && principal.issuer == "corp-idp"', True),
        ('claims.org.tier.upperAscii() == "GOLD"', True),  # the strings extension
        (
            'timestamp("2025-01-01T00:00:00Z") + duration("24h") '
            '== timestamp("2025-01-02T00:00:00Z")',
            True,
        ),
    ],
)
def test_conditions_evaluate_as_cel_says(source: str, expected: bool) -> None:
    assert evaluate(source) is expected


def test_unicode_strings_count_code_points() -> None:
    given = inputs(args={"name": "héllo wörld ✓"})
    assert evaluate("size(args.name) == 13", given) is True
    assert evaluate('args.name.startsWith("hé") && args.name.endsWith("✓")', given) is True


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("args.count == 3.0", True),  # request values are dynamic: compared as numbers
        ("args.ratio < 1", True),
        ("args.count > 2u", True),
        ("args.flag == 1", False),  # a bool is never a number
        ("args.flag == true", True),
        ("args.none == null", True),
        ("args.big == 9223372036854775807", True),
        ("args.above_int64 > 9223372036854775807", True),  # arrives as uint
        ("type(args.beyond_uint64) == double && args.beyond_uint64 > 1.8e19", True),
        ("args.huge > 0.0", True),  # beyond double too: +infinity
        ("type(args.big) == int && type(args.ratio) == double", True),
    ],
)
def test_json_values_convert_to_cel_types(source: str, expected: bool) -> None:
    given = inputs(
        args={
            "count": 3,
            "ratio": 0.5,
            "flag": True,
            "none": None,
            "big": 2**63 - 1,
            "above_int64": 2**63,
            "beyond_uint64": 2**64 + 1,
            "huge": 10**400,
        }
    )
    assert evaluate(source, given) is expected


def test_mappings_tuples_and_sets_are_taken_as_maps_and_lists() -> None:
    given = ConditionInputs(
        args=types.MappingProxyType({"pair": (1, 2), "nested": types.MappingProxyType({"a": 1})}),
        claims={},
        principal={"scopes": frozenset({"b", "a"})},
        request={},
    )
    assert evaluate("args.pair[1] == 2 && args.nested.a == 1", given) is True
    assert evaluate('principal.scopes == ["a", "b"]', given) is True


def test_a_value_no_cel_type_can_hold_is_a_failure_naming_its_type_only() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return SECRET

    result = evaluate('has(args.x) && args.y == "a"', inputs(args={"x": Opaque(), "y": "a"}))
    assert result == ConditionFailure("unsupported value of type Opaque in the inputs")


# --- errors: absorbed by && and ||, failures otherwise ------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("false && (1 / 0 == 1)", False),
        ("true || (1 / 0 == 1)", True),
        ("(1 / 0 == 1) || true", True),  # either order: CEL's commutative && and ||
        ("args.missing == 1 && false", False),
        ("args.missing == 1 || args.path.startsWith('/public/')", True),
        ("true ? true : args.missing == 1", True),
    ],
)
def test_and_or_absorb_errors_in_either_order(source: str, expected: bool) -> None:
    assert evaluate(source) is expected


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ('args.mode == "r"', "no such key 'mode'"),  # missing is an error, not false
        ('args.mode.startsWith("r")', "no such key 'mode'"),
        ('claims.org.region == "eu"', "no such key 'region'"),
        ('args["mode"] == "r"', "no such key 'mode'"),
        ("(1 / 0 == 1) || false", "division by zero"),
        ("args.n / 0 == 1", "division by zero"),
        ("args.n % 0 == 1", "modulus by zero"),
        ("args.big + 1 > 0", "integer overflow"),
        ("-args.big - 2 < 0", "integer overflow"),
        ("args.big * 2 > 0", "integer overflow"),
        ("0u - 1u == 0u", "unsigned integer overflow"),
        ("args.items[5] == 1", "list index out of range"),
        ("int(args.path) == 1", "cannot convert string to int"),
        ("args.path + 1 == 1", "no matching overload for _+_(string, int64)"),
        ('args.path.mode == "r"', "field selection on a value that is not a map"),
        ('args.path.matches("(")', "invalid regular expression"),
        ("args.path", "result is not a bool (got string)"),
        ("args.items", "result is not a bool (got list)"),
        ("claims.org", "result is not a bool (got map)"),
        ("args.n", "result is not a bool (got int)"),
        ("args.nothing", "result is not a bool (got null)"),
    ],
)
def test_failures_say_why_in_a_short_safe_reason(source: str, reason: str) -> None:
    given = inputs(
        args={
            "path": "/public/readme.md",
            "items": [1, 2, 3],
            "n": 5,
            "big": 2**63 - 1,
            "nothing": None,
        }
    )
    assert evaluate(source, given) == ConditionFailure(reason)


def test_a_key_computed_from_the_request_is_not_named() -> None:
    given = inputs(args={"m": {}}, claims={"sub": SECRET})
    assert evaluate("args.m[claims.sub] == 1", given) == ConditionFailure("no such key")


# --- no secret in any reason or message ---------------------------------------------------

FAILING_ON_SECRETS = [
    "args.s == 'x' || args.missing == 1",
    "args[args.s] == 1",
    "args.m[claims.sub] == 1",
    "claims[claims.sub] == 1",
    "args.s.matches(args.s + '(')",
    "args.s.matches(args.s) && args.s.matches('[' + claims.sub)",
    "int(args.s) == 1",
    "double(args.s) == 1.0",
    "bool(args.s)",
    "timestamp(args.s) > timestamp(0)",
    "duration(claims.sub) > duration('1s')",
    "args.l[size(args.s)] == 1",
    "args.l[args.s] == 1",
    "args.s + 1 == 1",
    "args.s > 1",
    "args.s.x == 1",
    "args.s",
    "claims.sub",
    "args.m",
    "args.l",
    "args.s.startsWith(args.n)",
    "args.n + args.big > 0",
    "args.deep.a.b.c == 1",
    "args.huge_key_holder[args.s] > 0",
]


@pytest.mark.parametrize("source", FAILING_ON_SECRETS)
def test_no_failure_reason_contains_a_value_from_the_request(source: str) -> None:
    given = inputs(
        args={
            "s": SECRET,
            "m": {"k": SECRET},
            "l": [SECRET],
            "n": 7,
            "big": 2**63 - 1,
            "deep": {"a": {"b": SECRET}},
            "huge_key_holder": {"x": 2**70},  # forces the slow conversion path
            "unrelated": SECRET,
        },
        claims={"sub": SECRET, "email": f"{SECRET}@acme.com"},
    )
    result = compile_condition(source).evaluate(given)
    assert isinstance(result, ConditionFailure)
    assert SECRET not in result.reason
    assert "s3cr3t" not in result.reason
    assert "\n" not in result.reason


def test_no_failure_reason_contains_an_out_of_range_value() -> None:
    # The runtime's own message for this quotes the number; ours must not.
    given = inputs(args={"x": {1: 2, "k": 1}}, claims={})
    result = evaluate('args.x.k == 1 && args.y == "a"', given)
    assert result == ConditionFailure("no such key 'y'")
    bad_key = ConditionInputs(args={7: SECRET}, claims={}, principal={}, request={})  # type: ignore[dict-item]
    failure = evaluate("has(args.x)", bad_key)
    assert isinstance(failure, ConditionFailure)
    assert SECRET not in failure.reason
    assert "7" not in failure.reason


# --- load time ----------------------------------------------------------------------------


def test_the_four_variables_are_the_ones_documented() -> None:
    assert CONDITION_VARIABLES == ("args", "claims", "principal", "request")
    for name in CONDITION_VARIABLES:
        assert isinstance(compile_condition(f"has({name}.x)"), Condition)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('arg.path == "x"', "unknown variable 'arg'; use args, claims, principal or request"),
        ("claim.sub == 'x'", "unknown variable 'claim'; use args, claims, principal or request"),
        ("env == 'prod'", "unknown variable 'env'; use args, claims, principal or request"),
        (
            "args.items.all(x, x > 0) && x",
            "unknown variable 'x'; use args, claims, principal or request",
        ),
        ("startWith(args.path)", "unknown function 'startWith' at column 10"),
        ('args.path.startWith("/")', "unknown function 'startWith' at column 20"),
    ],
)
def test_unknown_names_are_refused_at_load(source: str, message: str) -> None:
    assert syntax_error(source) == message


@pytest.mark.parametrize(
    "source",
    [
        "args.items.all(x, x > 0)",
        "args.items.exists(item, item == 2) && claims.groups.all(g, g != '')",
        "args.m.exists(k, claims[k] == args.m[k])",  # a comprehension over map keys
        "[1, 2].map(n, n * 2).exists(doubled, doubled == 4)",
        'args.path.startsWith("/") && claims.org.tier.size() > 0',  # fields aren't variables
    ],
)
def test_comprehension_variables_and_fields_are_not_unknown(source: str) -> None:
    assert compile_condition(source).source == source


def test_empty_and_too_long_are_refused() -> None:
    assert syntax_error("") == "must not be empty"
    assert syntax_error(" \n\t ") == "must not be empty"
    longest = "true" + " " * (MAX_CONDITION_LENGTH - 4)
    assert compile_condition(longest).source == longest
    assert syntax_error(longest + " ") == "is 2049 characters long; the limit is 2048"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("args.path ==", "syntax error at column 13: unexpected end of expression"),
        ('args.path.startsWith("/p"', "syntax error at column 26: missing ')' at '<EOF>'"),
        ("args.path args", "syntax error at column 11: extraneous input 'args' expecting <EOF>"),
        ("args..path", "syntax error at column 6: no viable alternative at input '..'"),
        (
            "has(args.x) &&\n  args.x ==",
            "syntax error at line 2, column 12: unexpected end of expression",
        ),
        (
            "1 == 1.0",
            "type error at column 3: found no matching overload for '_==_' applied to "
            "'(int, double)'",
        ),
    ],
)
def test_parse_errors_are_one_line_with_the_column(source: str, message: str) -> None:
    assert syntax_error(source) == message


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("args.path + '/'", "must evaluate to a bool, not string"),
        ("size(args.items)", "must evaluate to a bool, not int"),
        ("[true]", "must evaluate to a bool, not list"),
    ],
)
def test_a_result_that_can_never_be_a_bool_is_refused_at_load(source: str, message: str) -> None:
    assert syntax_error(source) == message


def test_load_messages_quote_nothing_but_the_expression() -> None:
    for source in ["args.x ==", "nope == 1", "1 == 'a'", "args.x.frob()", "'" + "x" * 300]:
        message = syntax_error(source)
        assert "\n" not in message
        assert len(message) <= 200
        assert "<input>" not in message
        assert "INVALID_ARGUMENT" not in message


# --- sharing -------------------------------------------------------------------------------


def test_one_compiled_condition_serves_concurrent_checks() -> None:
    condition = compile_condition(
        'args.path.startsWith("/public/") && args.items.all(x, x < 100) && '
        '"admin" in principal.scopes'
    )
    wrong: list[tuple[int, int]] = []

    def check(worker: int) -> None:
        for i in range(2000):
            path = f"/public/{worker}/{i}" if i % 2 else f"/private/{worker}/{i}"
            result = condition.evaluate(inputs(args={"path": path, "items": [i % 50]}))
            if result is not bool(i % 2):
                wrong.append((worker, i))

    threads = [threading.Thread(target=check, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_conditions_compare_by_source() -> None:
    assert compile_condition("has(args.x)") == compile_condition("has(args.x)")
    assert "s3cr3t" not in repr(compile_condition("has(args.x)"))
