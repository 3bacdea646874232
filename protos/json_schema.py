"""Write the JSON Schemas (draft 2020-12) of the published formats, for editors: the policy
bundle (``bundle.proto``) and the policy test case file (``cases.proto``).

Each schema is derived from its proto, the format's published definition, by the rules the
shape check applies to both (``policy_service/bundles/shape.py``): proto field names, no
unknown keys, lists for repeated fields, mappings for messages and maps, any JSON mapping
for ``google.protobuf.Struct``, at most one field of a oneof, strict scalar types and the
integer ranges of each proto type. Descriptions are the .proto comments, read from a
descriptor set built with source info, so a schema documents exactly what its proto does.

The only hand-kept facts are each format's ``enums`` (the values the meaning pass accepts
for a few string fields) and ``required`` (the fields it insists on; proto3 cannot say
either). Nothing is guessed from comment prose; tests check the tables against the protos
and against the loaders.

``python protos/generate.py`` writes the schemas along with the Python code;
``python protos/json_schema.py [OUT]`` writes only the schemas.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "policy_service" / "gen"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


@dataclasses.dataclass(frozen=True)
class SchemaSpec:
    """One published format: its proto, root message, and what its proto cannot say."""

    proto: str  # relative to protos/
    root: str  # the message a whole file is
    file_name: str  # written beside the generated code of ``proto``
    schema_id: str
    title: str
    # Allowed values of string fields, as "Message.field" -> values (for a repeated field,
    # the values of its items). They mirror what the meaning pass accepts.
    enums: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Fields the meaning pass reports as required when they are left out, as "Message.field".
    required: tuple[str, ...] = ()


BUNDLE = SchemaSpec(
    proto="policy_service/bundle/v1/bundle.proto",
    root="Bundle",
    file_name="bundle.schema.json",
    schema_id="https://policy-service.dev/schemas/bundle/v1/bundle.schema.json",
    title="policy-service policy bundle v1",
    # "" is listed where the loader reads an empty string as the default (proto3 cannot tell
    # it from an absent key), so the schema never refuses a bundle the loader accepts.
    enums={
        "Bundle.version": ("v1",),
        "Issuer.algorithms": ("RS256", "PS256", "ES256", "EdDSA", "HS256"),
        "Upstream.protocol": ("mcp", "a2a", "http"),
        "Upstream.denial_style": ("http", "jsonrpc", ""),
        "Rule.effect": ("allow", "deny", ""),
        "Limit.on_store_failure": ("open", "closed", ""),
        "Pins.mode": ("enforce", "warn", "off", ""),
    },
)
# Limit.rate deliberately has no `pattern`: the loader matches its regex against the
# lower-cased text ("600/MIN" is valid), and JSON Schema patterns have no case-insensitive
# flag, so the exact regex would refuse bundles the loader accepts.

CASES = SchemaSpec(
    proto="policy_service/cases/v1/cases.proto",
    root="CaseFile",
    file_name="cases.schema.json",
    schema_id="https://policy-service.dev/schemas/cases/v1/cases.schema.json",
    title="policy-service policy test cases v1",
    enums={"Expectation.decision": ("allow", "deny")},
    required=(
        "CaseFile.cases",
        "Case.name",
        "Case.call",
        "Case.expect",
        "Call.upstream",
        "Expectation.decision",
    ),
)
# Call's `target` oneof stays "at most one" here, as a oneof says; that one of them must be
# given is the case reader's check.

PINS = SchemaSpec(
    proto="policy_service/pins/v1/pins.proto",
    root="PinFile",
    file_name="pins.schema.json",
    schema_id="https://policy-service.dev/schemas/pins/v1/pins.schema.json",
    title="policy-service tool-definition pins v1",
    required=("PinFile.upstream", "ToolPin.name", "ToolPin.sha256"),
)

SPECS = (BUNDLE, CASES, PINS)

_Type = descriptor_pb2.FieldDescriptorProto
# The one well-known type the shape check reads, as free-form JSON (claims, arguments).
STRUCT = ".google.protobuf.Struct"
_SCALARS: dict[int, dict[str, Any]] = {
    _Type.TYPE_STRING: {"type": "string"},
    _Type.TYPE_BOOL: {"type": "boolean"},
    _Type.TYPE_DOUBLE: {"type": "number"},
    _Type.TYPE_FLOAT: {"type": "number"},
}
# The same ranges as the loader's shape check (a test holds them equal).
INTEGER_RANGES: dict[int, tuple[int, int]] = {
    _Type.TYPE_INT32: (-(2**31), 2**31 - 1),
    _Type.TYPE_INT64: (-(2**63), 2**63 - 1),
    _Type.TYPE_UINT32: (0, 2**32 - 1),
    _Type.TYPE_UINT64: (0, 2**64 - 1),
}
# source_code_info paths: FileDescriptorProto.message_type = 4, DescriptorProto.field = 2,
# DescriptorProto.nested_type = 3, FileDescriptorProto.syntax = 12.
_MESSAGE_TYPE, _FIELD, _NESTED_TYPE, _SYNTAX = 4, 2, 3, 12


def descriptor_set(proto: str) -> descriptor_pb2.FileDescriptorSet:
    """Compile ``proto`` (relative to protos/) with its comments and imports."""
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "descriptors.pb"
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            "--include_source_info",
            "--include_imports",
            f"--descriptor_set_out={out}",
            proto,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def clean_comment(text: str) -> str:
    """Turn a protoc comment into a description: one line per paragraph, list items and
    indented lines kept on their own lines."""
    paragraphs: list[list[str]] = [[]]
    for raw in text.splitlines():
        line = raw[1:] if raw.startswith(" ") else raw
        if not line.strip():
            paragraphs.append([])
            continue
        current = paragraphs[-1]
        if current and not line.startswith((" ", "- ", "* ")):
            current[-1] = f"{current[-1]} {line.strip()}"
        else:
            current.append(line.rstrip())
    return "\n\n".join("\n".join(lines) for lines in paragraphs if lines)


def comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Every commented element of ``file`` by its source path: leading comment, then any
    trailing one."""
    found: dict[tuple[int, ...], str] = {}
    for location in file.source_code_info.location:
        parts = [
            clean_comment(part)
            for part in (location.leading_comments, location.trailing_comments)
            if part.strip()
        ]
        if parts:
            found[tuple(location.path)] = "\n\n".join(parts)
    return found


class _Messages:
    """The messages of a descriptor set by full name, with their comments."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.by_name: dict[str, tuple[descriptor_pb2.DescriptorProto, dict[str, str]]] = {}
        for file in files.file:
            found = comments(file)
            prefix = f".{file.package}" if file.package else ""
            for index, message in enumerate(file.message_type):
                self._add(message, prefix, (_MESSAGE_TYPE, index), found)

    def _add(
        self,
        message: descriptor_pb2.DescriptorProto,
        prefix: str,
        path: tuple[int, ...],
        found: dict[tuple[int, ...], str],
    ) -> None:
        full_name = f"{prefix}.{message.name}"
        docs = {
            "": found.get(path, ""),
            **{
                field.name: found.get((*path, _FIELD, index), "")
                for index, field in enumerate(message.field)
            },
        }
        self.by_name[full_name] = (message, docs)
        for index, nested in enumerate(message.nested_type):
            self._add(nested, full_name, (*path, _NESTED_TYPE, index), found)


def def_name(full_name: str, package: str) -> str:
    """``$defs`` key of a message: its name inside the package (``Bundle``, ``Outer.Inner``)."""
    return full_name.removeprefix(f".{package}.")


def build_schema(files: descriptor_pb2.FileDescriptorSet, spec: SchemaSpec) -> Any:
    (file,) = (f for f in files.file if f.name == spec.proto)
    messages = _Messages(files)
    defs: dict[str, Any] = {}
    pending = [f".{file.package}.{spec.root}"]
    while pending:
        full_name = pending.pop()
        name = def_name(full_name, file.package)
        if name in defs:
            continue
        if full_name not in messages.by_name or not full_name.startswith(f".{file.package}."):
            raise SystemExit(f"{full_name}: not in {spec.proto} (imported types are unsupported)")
        message, docs = messages.by_name[full_name]
        properties: dict[str, Any] = {}
        for field in message.field:
            where = f"{name}.{field.name}"
            value, refers_to = _field_schema(field, where, spec, file.package, messages)
            if docs[field.name]:
                value["description"] = docs[field.name]
            properties[field.name] = value
            pending.extend(refers_to)
        defs[name] = {"type": "object", "additionalProperties": False, "properties": properties}
        required = [
            field.name for field in message.field if f"{name}.{field.name}" in spec.required
        ]
        if required:
            defs[name]["required"] = required
        one_of = _one_of(message)
        if one_of:
            defs[name]["dependentSchemas"] = one_of
        if docs[""]:
            defs[name]["description"] = docs[""]
    _check_tables(spec, defs)
    return {
        "$schema": DRAFT,
        "$id": spec.schema_id,
        "title": spec.title,
        "description": comments(file).get((_SYNTAX,), ""),
        "$ref": f"#/$defs/{spec.root}",
        "$defs": defs,
    }


def _check_tables(spec: SchemaSpec, defs: Mapping[str, Any]) -> None:
    """A hand-kept fact about a field the proto does not have would silently do nothing."""
    for table, elements in (("enums", list(spec.enums)), ("required", list(spec.required))):
        unknown = sorted(
            element
            for element in elements
            if element.partition(".")[2]
            not in defs.get(element.partition(".")[0], {}).get("properties", {})
        )
        if unknown:
            raise SystemExit(
                f"{table} names fields {spec.proto} does not have: {', '.join(unknown)}"
            )


def _one_of(message: descriptor_pb2.DescriptorProto) -> dict[str, Any]:
    """At most one field of each real oneof: whichever is given forbids the others (a proto3
    `optional` is a oneof of its own, and needs nothing)."""
    groups: dict[int, list[str]] = {}
    for field in message.field:
        if field.HasField("oneof_index") and not field.proto3_optional:
            groups.setdefault(field.oneof_index, []).append(field.name)
    return {
        member: {"properties": {other: False for other in members if other != member}}
        for members in groups.values()
        if len(members) > 1
        for member in members
    }


def _field_schema(
    field: descriptor_pb2.FieldDescriptorProto,
    where: str,
    spec: SchemaSpec,
    package: str,
    messages: _Messages,
) -> tuple[dict[str, Any], list[str]]:
    """The schema of one field's value, by the shape check's rules, and the messages it
    refers to. Whatever the shape check cannot read (enums, bytes, maps with other than
    string keys, other imported types) stops generation rather than be guessed at."""
    value: dict[str, Any]
    refers_to: list[str] = []
    entry = messages.by_name.get(field.type_name) if field.type == _Type.TYPE_MESSAGE else None
    # Keys are strings in JSON anyway; saying so keeps YAML-aware validators to the shape
    # check's rule (`{1: x}` is a YAML mapping with a number for a key).
    if field.type_name == STRUCT:
        value = {"type": "object", "propertyNames": {"type": "string"}}  # any JSON mapping
    elif entry is not None and entry[0].options.map_entry:
        key, item = entry[0].field
        if key.type != _Type.TYPE_STRING:
            raise SystemExit(f"{where}: only maps with string keys are supported")
        item_schema, refers_to = _field_schema(item, where, spec, package, messages)
        map_schema = {
            "type": "object",
            "propertyNames": {"type": "string"},
            "additionalProperties": item_schema,
        }
        return map_schema, refers_to
    elif field.type == _Type.TYPE_MESSAGE:
        value = {"$ref": f"#/$defs/{def_name(field.type_name, package)}"}
        refers_to = [field.type_name]
    elif field.type in _SCALARS:
        value = dict(_SCALARS[field.type])
    elif field.type in INTEGER_RANGES:
        low, high = INTEGER_RANGES[field.type]
        value = {"type": "integer", "minimum": low, "maximum": high}
    else:
        raise SystemExit(f"{where}: field type {field.type} is not supported by the shape check")
    if where in spec.enums:
        if field.type != _Type.TYPE_STRING:
            raise SystemExit(f"{where}: enums lists values for a field that is not a string")
        value["enum"] = list(spec.enums[where])
    if field.label == _Type.LABEL_REPEATED:
        value = {"type": "array", "items": value}
    return value, refers_to


def schema_text(spec: SchemaSpec, files: descriptor_pb2.FileDescriptorSet | None = None) -> str:
    schema = build_schema(files if files is not None else descriptor_set(spec.proto), spec)
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_path(spec: SchemaSpec, out: Path = OUT) -> Path:
    return out / Path(spec.proto).parent / spec.file_name


def write_schemas(out: Path = OUT) -> list[Path]:
    written = []
    for spec in SPECS:
        path = schema_path(spec, out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(schema_text(spec), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    write_schemas(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
