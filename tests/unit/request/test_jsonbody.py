"""Strict JSON parsing: every input two parsers could read differently is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from policy_service.request.jsonbody import DEFAULT_MAX_DEPTH, parse_json, readable_id
from policy_service.request.model import Malformed


def _rejected(body: bytes, reason: str, **kwargs: Any) -> Malformed:
    result = parse_json(body, **kwargs)
    assert isinstance(result, Malformed), f"accepted {body[:40]!r}"
    assert result.reason == reason
    assert result.jsonrpc_code == -32700
    assert result.http_status == 400
    assert result.request_id is None
    assert len(result.message) < 200  # one sentence, never an echo of the body
    return result


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b"[1, 2.5, true, false, null]", [1, 2.5, True, False, None]),
        (b'"text"', "text"),
        (b"0", 0),
        (b"-12", -12),
        (b"1e300", 1e300),
        (b' \r\n\t{"a": []} \n', {"a": []}),
        ('{"name": "caf\u00e9 \u4e16\u754c"}'.encode(), {"name": "caf\u00e9 \u4e16\u754c"}),
        (b'{"emoji": "\\ud83d\\ude00"}', {"emoji": "\U0001f600"}),  # a valid surrogate pair
        (b'{"path": "C:\\\\ud800"}', {"path": "C:\\ud800"}),  # escaped backslash, not a \u
        (
            b'{"a": {"b": 1}, "b": {"a": 2}}',
            {"a": {"b": 1}, "b": {"a": 2}},
        ),  # same key, two objects
    ],
)
def test_valid_documents_parse_to_plain_values(body: bytes, expected: Any) -> None:
    assert parse_json(body) == expected


@pytest.mark.parametrize("body", [b"", b" ", b"\r\n\t  \n"])
def test_empty_or_whitespace_body_is_empty_body(body: bytes) -> None:
    _rejected(body, "empty_body")


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"a": 1',
        b"{'a': 1}",  # single quotes
        b'{"a": 1,}',  # trailing comma
        b"[1, 2,]",
        b'{"a": 1} {"b": 2}',  # two documents
        b'{"a": 1} x',
        b"{a: 1}",
        b'{"a": "line\nbreak"}',  # raw control character inside a string
        b'{"a": "\x00"}',
        b"// comment\n{}",
        b"\xff\xfe{}",  # not UTF-8
        b'{"a": "\xc3\x28"}',  # invalid UTF-8 continuation
        b'{"a": "\xc0\xaf"}',  # overlong encoding of "/"
        b'{"a": "\xed\xa0\x80"}',  # a UTF-8 encoded surrogate (CESU-8)
        b"\xef\xbb\xbf{}",  # UTF-8 byte order mark
        b"\x00{}",
    ],
)
def test_invalid_json_and_encodings_are_rejected(body: bytes) -> None:
    _rejected(body, "invalid_json")


def test_bom_gets_its_own_message() -> None:
    assert "byte order mark" in _rejected(b'\xef\xbb\xbf{"a": 1}', "invalid_json").message


@pytest.mark.parametrize(
    "body",
    [
        b"NaN",
        b"[NaN]",
        b'{"a": Infinity}',
        b'{"a": {"b": -Infinity}}',
        b"1e999",  # overflows to inf: NaN/Infinity by another name
        b'{"a": -1e400}',
    ],
)
def test_nan_and_infinity_are_rejected(body: bytes) -> None:
    _rejected(body, "invalid_json")


def test_integer_beyond_python_digit_limit_is_rejected_not_raised() -> None:
    _rejected(b'{"id": ' + b"9" * 5000 + b"}", "invalid_json")


@pytest.mark.parametrize(
    "body",
    [
        b'"\\ud800"',  # lone high surrogate
        b'"\\udc00"',  # lone low surrogate
        b'{"name": "tool\\uDBFF"}',  # upper-case hex
        b'{"a": ["\\ude00\\ud83d"]}',  # pair in the wrong order
        b'{"\\ud800": 1}',  # in a key
    ],
)
def test_lone_surrogate_escapes_are_rejected(body: bytes) -> None:
    assert "surrogate" in _rejected(body, "invalid_json").message


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1, "a": 2}',
        b'{"a": 1, "a": 1}',  # even with the same value
        b'{"name": "safe", "arguments": {}, "name": "rm_rf"}',
        b'[{"x": {"deep": [{"k": 1, "k": 2}]}}]',  # nested inside arrays
        b'{"a": 1, "\\u0061": 2}',  # equal once the escape is decoded
        b'{"params": {"name": "a"}, "params": {"name": "b"}}',
    ],
)
def test_duplicate_keys_anywhere_are_rejected(body: bytes) -> None:
    _rejected(body, "duplicate_key")


@pytest.mark.parametrize(
    "body",
    [
        b'{"method": "tools/call", "Method": "tools/list"}',
        b'{"params": {"name": "get_quote", "NAME": "place_trade"}}',
        b'[{"x": {"deep": [{"Key": 1, "kEY": 2}]}}]',  # nested inside arrays
        '{"k": 1, "\u212a": 2}'.encode(),  # the Kelvin sign folds to "k" (Go does so too)
        '{"s": 1, "\u017f": 2}'.encode(),  # the long s folds to "s"
        b'{"a": 1, "\\u0041": 2}',  # equal once the escape is decoded and folded
    ],
)
def test_keys_differing_only_in_case_are_rejected_anywhere(body: bytes) -> None:
    message = _rejected(body, "duplicate_key").message
    assert message == "JSON object has keys that differ only in letter case"


def test_keys_that_differ_in_more_than_case_are_fine() -> None:
    assert parse_json(b'{"Method": 1, "Params": {"Name": "x", "ID": 2}, "id": 3}') == {
        "Method": 1,
        "Params": {"Name": "x", "ID": 2},
        "id": 3,
    }


def test_duplicate_key_message_does_not_quote_the_key() -> None:
    secret_key = "k" * 50
    body = json.dumps({}).encode()[:-1] + f'"{secret_key}": 1, "{secret_key}": 2}}'.encode()
    assert secret_key not in _rejected(body, "duplicate_key").message


def _nested(depth: int, kind: str = "array") -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    return b'{"a":[' * (depth // 2) + b"0" + b"]}" * (depth // 2)  # mixed


@pytest.mark.parametrize("kind", ["array", "object", "mixed"])
def test_nesting_at_the_limit_is_accepted(kind: str) -> None:
    assert not isinstance(parse_json(_nested(DEFAULT_MAX_DEPTH, kind)), Malformed)


@pytest.mark.parametrize("kind", ["array", "object", "mixed"])
@pytest.mark.parametrize("depth", [DEFAULT_MAX_DEPTH + 2, 500, 5_000, 100_000])
def test_nesting_beyond_the_limit_is_too_deep(kind: str, depth: int) -> None:
    _rejected(_nested(depth, kind), "too_deep")


def test_one_level_past_the_limit_is_too_deep() -> None:
    _rejected(_nested(DEFAULT_MAX_DEPTH + 1), "too_deep")


def test_unclosed_100k_deep_input_does_not_crash() -> None:
    result = parse_json(b"[" * 100_000)
    assert isinstance(result, Malformed)
    assert result.reason in {"too_deep", "invalid_json"}


def test_max_depth_is_configurable() -> None:
    assert parse_json(_nested(3), max_depth=3) == [[[]]]
    _rejected(_nested(4), "too_deep", max_depth=3)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    body = json.dumps({"text": "[" * 1000 + "{" * 1000, "list": [[1], [2], [3]] * 50}).encode()
    result = parse_json(body)
    assert isinstance(result, dict)
    assert result["text"].startswith("[[[")


def test_many_shallow_containers_are_accepted() -> None:
    body = json.dumps({"rows": [{"id": i, "tags": [str(i)]} for i in range(500)]}).encode()
    result = parse_json(body)
    assert isinstance(result, dict)
    assert len(result["rows"]) == 500


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"id": 7}, 7),
        ({"id": 0}, 0),
        ({"id": -1}, -1),
        ({"id": "abc"}, "abc"),
        ({"id": ""}, ""),
        ({"id": True}, None),  # bool is an int subclass in Python, not a JSON-RPC id
        ({"id": False}, None),
        ({"id": 1.5}, None),
        ({"id": None}, None),
        ({"id": [1]}, None),
        ({"id": {"a": 1}}, None),
        ({}, None),
        ([{"id": 1}], None),
        ("id", None),
        (None, None),
    ],
)
def test_readable_id(message: Any, expected: Any) -> None:
    assert readable_id(message) == expected
    assert type(readable_id(message)) is type(expected)
