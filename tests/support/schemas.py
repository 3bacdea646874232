"""What the JSON Schema tests share (bundles/test_schema.py, authoring/test_cases_schema.py): the
generator, loaded from protos/, and the ways they hold a schema to the shape check."""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from policy_service.bundles.shape import STRUCT

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def load_generator() -> Any:
    """protos/json_schema.py, which is a script beside the protos, not a package module."""
    spec = importlib.util.spec_from_file_location("json_schema", REPO / "protos" / "json_schema.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def loader_path(parts: Any) -> str:
    """A JSON pointer's parts as the shape check writes a path: ``upstreams[0].rules``."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


# -- fixtures: which pinned problems are the shape check's -----------------------------------

_EXPECT = re.compile(r"^# expect: (?:(?P<path>[a-z_][a-z0-9_.\-\[\]]*): )?(?P<message>.*)$")
# The shape check's messages (shape.py). Its unknown-key message always lists the known
# keys; the meaning pass's "unknown key 'clients'" about a limit's `key:` word does not.
_SHAPE_PREFIXES = ("expected ", "has no value", "keys must be strings")


def is_shape_message(message: str) -> bool:
    return message.startswith(_SHAPE_PREFIXES) or (
        message.startswith("unknown key '") and "; expected one of: " in message
    )


def shape_problems(fixture: Path) -> list[tuple[str, str]]:
    """The (path, message) pairs ``fixture`` pins that are shape problems."""
    pinned = (_EXPECT.match(line) for line in fixture.read_text("utf-8").splitlines())
    return [
        (found["path"] or "", found["message"])
        for found in pinned
        if found is not None and is_shape_message(found["message"])
    ]


# -- field by field ----------------------------------------------------------------------------

SAMPLES: list[Any] = [
    None, True, False, 0, 1, -1, 2**31, 2**32, 2**63, 2**64, 1.5, -0.5,
    "x", "", [], ["x"], [1], {}, {"x": 1}, {1: "x"},
]  # fmt: skip


def field_sites(
    descriptor: Descriptor, trail: tuple[FieldDescriptor, ...] = ()
) -> Iterator[tuple[tuple[FieldDescriptor, ...], FieldDescriptor]]:
    """Every field reachable from ``descriptor``, with the fields leading to it. Maps and
    ``Struct`` are leaves: their entries are keys of the document, not fields."""
    ancestors = {descriptor.full_name} | {f.message_type.full_name for f in trail if f.message_type}
    for field in descriptor.fields:
        yield trail, field
        target = field.message_type
        if (
            target is not None
            and target.full_name not in ancestors
            and target.full_name != STRUCT
            and not target.GetOptions().map_entry
        ):
            yield from field_sites(target, (*trail, field))


def place(trail: tuple[FieldDescriptor, ...], field: FieldDescriptor, value: Any) -> Any:
    document: Any = {field.name: value}
    for parent in reversed(trail):
        document = {parent.name: [document] if parent.is_repeated else document}
    return document


# -- descriptions ------------------------------------------------------------------------------


def commented_elements(generator: Any, proto: str) -> Iterator[tuple[str, str]]:
    """(``Message`` or ``Message.field``, comment) for every commented message and field,
    read straight from the descriptor set's source info."""
    files = generator.descriptor_set(proto)
    (file,) = (f for f in files.file if f.name == proto)
    locations = {tuple(location.path): location for location in file.source_code_info.location}

    def walk(messages: Any, path: tuple[int, ...], prefix: str) -> Iterator[tuple[str, str]]:
        for index, message in enumerate(messages):
            here = (*path, index)
            name = f"{prefix}{message.name}"
            yield name, _comment(locations.get(here))
            for number, field in enumerate(message.field):
                yield f"{name}.{field.name}", _comment(locations.get((*here, 2, number)))
            yield from walk(message.nested_type, (*here, 3), f"{name}.")

    for name, comment in walk(file.message_type, (4,), ""):
        if comment:
            yield name, comment


def _comment(location: Any) -> str:
    if location is None:
        return ""
    return " ".join(f"{location.leading_comments} {location.trailing_comments}".split())


def description(schema: Mapping[str, Any], element: str) -> str | None:
    message, _, field = element.rpartition(".") if "." in element else (element, "", "")
    node = schema["$defs"][message]
    if field:
        node = node["properties"][field]
    return cast("str | None", node.get("description"))
