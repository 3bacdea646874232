"""Check a parsed YAML document against a proto message (bundle.proto, cases.proto).

This is the first of two validation passes: it looks only at shape (known keys, value
types, at most one field of a oneof) and reports every problem at once, each with the path
where it is. Meaning (unknown issuer names, duplicate prefixes...) is checked afterwards, by
the bundle compiler or the case reader. Walking the descriptor instead of hand-writing the
shape keeps the published schemas and the checks from drifting apart.

A ``google.protobuf.Struct`` reads as the proto JSON mapping says: any mapping with string
keys that holds only JSON values. A ``map<string, V>`` is a mapping whose values are ``V``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from policy_service.errors import BundleProblem

# The one well-known type read as free-form JSON (claims, arguments); protos/json_schema.py
# knows the same one.
STRUCT = "google.protobuf.Struct"
_TYPE_NAMES = {
    FieldDescriptor.TYPE_STRING: "a string",
    FieldDescriptor.TYPE_BOOL: "true or false",
    FieldDescriptor.TYPE_DOUBLE: "a number",
    FieldDescriptor.TYPE_FLOAT: "a number",
    FieldDescriptor.TYPE_INT32: "an integer",
    FieldDescriptor.TYPE_INT64: "an integer",
    FieldDescriptor.TYPE_UINT32: "an integer",
    FieldDescriptor.TYPE_UINT64: "an integer",
    FieldDescriptor.TYPE_MESSAGE: "a mapping",
}
# What the proto type can hold: beyond it, protobuf's parser would fail without a path.
_INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def describe(value: Any) -> str:
    """Name a YAML value's type the way a bundle author thinks of it."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def check_shape(document: Any, descriptor: Descriptor, file: str) -> list[BundleProblem]:
    problems: list[BundleProblem] = []
    if not isinstance(document, Mapping):
        problems.append(
            BundleProblem(file, "", f"expected a mapping at the top, got {describe(document)}")
        )
        return problems
    _check_message(document, descriptor, file, "", problems)
    return problems


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_message(
    value: Mapping[Any, Any],
    descriptor: Descriptor,
    file: str,
    path: str,
    problems: list[BundleProblem],
) -> None:
    fields = descriptor.fields_by_name
    for key, item in value.items():
        if not isinstance(key, str):
            problems.append(BundleProblem(file, path, f"keys must be strings, got {describe(key)}"))
            continue
        field = fields.get(key)
        if field is None:
            problems.append(
                BundleProblem(file, _join(path, key), _unknown_key_message(key, fields))
            )
            continue
        _check_field(item, field, file, _join(path, key), problems)
    for oneof in descriptor.oneofs:
        # A proto3 `optional` is a oneof of one field, so only real oneofs can trip this.
        given = [field.name for field in oneof.fields if field.name in value]
        if len(given) > 1:
            members = ", ".join(field.name for field in oneof.fields)
            problems.append(
                BundleProblem(
                    file, path, f"expected at most one of: {members}; got {', '.join(given)}"
                )
            )


def _unknown_key_message(key: str, fields: Mapping[str, FieldDescriptor]) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}; expected one of: {', '.join(sorted(fields))}"


def _check_field(
    value: Any, field: FieldDescriptor, file: str, path: str, problems: list[BundleProblem]
) -> None:
    if value is None:
        problems.append(BundleProblem(file, path, "has no value; remove the key or give it one"))
        return
    if _is_map(field):
        _check_map(value, field, file, path, problems)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            problems.append(BundleProblem(file, path, f"expected a list, got {describe(value)}"))
            return
        for index, item in enumerate(value):
            _check_single(item, field, file, f"{path}[{index}]", problems)
        return
    _check_single(value, field, file, path, problems)


def _check_single(
    value: Any, field: FieldDescriptor, file: str, path: str, problems: list[BundleProblem]
) -> None:
    if field.message_type is not None and field.message_type.full_name == STRUCT:
        _check_struct(value, file, path, problems)
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if not isinstance(value, Mapping):
            problems.append(BundleProblem(file, path, f"expected a mapping, got {describe(value)}"))
            return
        assert field.message_type is not None  # TYPE_MESSAGE fields always have one
        _check_message(value, field.message_type, file, path, problems)
        return
    if not _scalar_matches(value, field.type):
        expected = _TYPE_NAMES.get(field.type, "a value")
        problems.append(BundleProblem(file, path, f"expected {expected}, got {describe(value)}"))
        return
    bounds = _INTEGER_RANGES.get(field.type)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        low, high = bounds
        problems.append(
            BundleProblem(file, path, f"expected an integer from {low} to {high}, got {value}")
        )


def _scalar_matches(value: Any, field_type: int) -> bool:
    # bool is an int in Python; YAML `yes`/`true` must not pass as a number, nor 1 as a string.
    if field_type == FieldDescriptor.TYPE_STRING:
        return isinstance(value, str)
    if field_type == FieldDescriptor.TYPE_BOOL:
        return isinstance(value, bool)
    if field_type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, int) and not isinstance(value, bool)


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry


def _check_map(
    value: Any, field: FieldDescriptor, file: str, path: str, problems: list[BundleProblem]
) -> None:
    if not isinstance(value, Mapping):
        problems.append(BundleProblem(file, path, f"expected a mapping, got {describe(value)}"))
        return
    assert field.message_type is not None  # map fields always have an entry type
    entry_value = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        if not isinstance(key, str):
            problems.append(BundleProblem(file, path, f"keys must be strings, got {describe(key)}"))
            continue
        _check_field(item, entry_value, file, _join(path, key), problems)


def _check_struct(value: Any, file: str, path: str, problems: list[BundleProblem]) -> None:
    if not isinstance(value, Mapping):
        problems.append(BundleProblem(file, path, f"expected a mapping, got {describe(value)}"))
        return
    _check_json(value, file, path, problems)


def _check_json(value: Any, file: str, path: str, problems: list[BundleProblem]) -> None:
    # YAML reads more than JSON holds (dates, binary): such a value would break later, when
    # it is sent as a request body, instead of here with its path.
    if value is None or isinstance(value, str | bool | int | float):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, file, f"{path}[{index}]", problems)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(
                    BundleProblem(file, path, f"keys must be strings, got {describe(key)}")
                )
                continue
            _check_json(item, file, _join(path, key), problems)
        return
    problems.append(BundleProblem(file, path, f"expected a JSON value, got {describe(value)}"))


# --- what is left when the wrong parts are taken out ---------------------------------------


def shape_valid_part(document: Mapping[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """``document`` without what the shape check refuses: unknown keys, values of the wrong
    type, and all but the first of a oneof's fields. The meaning pass then runs on the rest,
    so one shape error does not hide the meaning errors elsewhere in the file. Items of a
    list of mappings are kept (emptied where wrong), so the paths of the rest still hold."""
    return _valid_message(document, descriptor)


_DROP = object()


def _valid_message(value: Mapping[Any, Any], descriptor: Descriptor) -> dict[str, Any]:
    fields = descriptor.fields_by_name
    kept: dict[str, Any] = {}
    for key, item in value.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        valid = _valid_field(item, field)
        if valid is not _DROP:
            kept[key] = valid
    for oneof in descriptor.oneofs:
        for extra in [field.name for field in oneof.fields if field.name in kept][1:]:
            del kept[extra]
    return kept


def _valid_field(value: Any, field: FieldDescriptor) -> Any:
    if value is None:
        return _DROP
    if _is_map(field):
        if not isinstance(value, Mapping):
            return _DROP
        assert field.message_type is not None
        entry = field.message_type.fields_by_name["value"]
        entries = {k: _valid_field(v, entry) for k, v in value.items() if isinstance(k, str)}
        return {k: v for k, v in entries.items() if v is not _DROP}
    if field.is_repeated:
        if not isinstance(value, list):
            return _DROP
        if field.type == FieldDescriptor.TYPE_MESSAGE and not _is_struct(field):
            return [
                _valid_single(item, field) if isinstance(item, Mapping) else {} for item in value
            ]
        items = [_valid_single(item, field) for item in value]
        return [item for item in items if item is not _DROP]
    return _valid_single(value, field)


def _is_struct(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name == STRUCT


def _valid_single(value: Any, field: FieldDescriptor) -> Any:
    if _is_struct(field):
        problems: list[BundleProblem] = []
        _check_struct(value, "", "", problems)
        return _DROP if problems else value
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if not isinstance(value, Mapping):
            return _DROP
        assert field.message_type is not None
        return _valid_message(value, field.message_type)
    if not _scalar_matches(value, field.type):
        return _DROP
    bounds = _INTEGER_RANGES.get(field.type)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        return _DROP
    return value
