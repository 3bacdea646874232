"""Write a JSON Schema (draft 2020-12) of the policy bundle, for editors.

The schema is derived from ``bundle.proto``, the bundle's published definition, by the rules
the loader's shape check applies (``policy_service/bundles/shape.py``): proto field names,
no unknown keys, lists for repeated fields, mappings for messages, strict scalar types and
the integer ranges of each proto type. Descriptions are the .proto comments, read from a
descriptor set built with source info, so the schema documents exactly what the proto does.

The only hand-kept facts are ``ENUMS``: the values the meaning pass accepts for a few string
fields. Nothing is guessed from comment prose; a test checks the table against the proto and
against the loader.

``python protos/generate.py`` writes the schema along with the Python code;
``python protos/bundle_schema.py [OUT]`` writes only the schema.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "policy_service" / "gen"

BUNDLE_PROTO = "policy_service/bundle/v1/bundle.proto"
ROOT_MESSAGE = "Bundle"
SCHEMA_NAME = "bundle.schema.json"
SCHEMA_ID = "https://policy-service.dev/schemas/bundle/v1/bundle.schema.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
TITLE = "policy-service policy bundle v1"

# Allowed values of string fields, as "Message.field" -> values (for a repeated field, the
# values of its items). They mirror what the meaning pass accepts, which the proto cannot
# say. "" is listed where the loader reads an empty string as the default (proto3 cannot tell
# it from an absent key), so the schema never refuses a bundle the loader accepts.
ENUMS: dict[str, tuple[str, ...]] = {
    "Bundle.version": ("v1",),
    "Issuer.algorithms": ("RS256", "PS256", "ES256", "EdDSA", "HS256"),
    "Upstream.protocol": ("mcp", "a2a", "http"),
    "Upstream.denial_style": ("http", "jsonrpc", ""),
    "Rule.effect": ("allow", "deny", ""),
    "Limit.on_store_failure": ("open", "closed", ""),
}
# Limit.rate deliberately has no `pattern`: the loader matches its regex against the
# lower-cased text ("600/MIN" is valid), and JSON Schema patterns have no case-insensitive
# flag, so the exact regex would refuse bundles the loader accepts.

_Type = descriptor_pb2.FieldDescriptorProto
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


def descriptor_set(proto: str = BUNDLE_PROTO) -> descriptor_pb2.FileDescriptorSet:
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


def build_schema(files: descriptor_pb2.FileDescriptorSet, proto: str = BUNDLE_PROTO) -> Any:
    (file,) = (f for f in files.file if f.name == proto)
    messages = _Messages(files)
    defs: dict[str, Any] = {}
    pending = [f".{file.package}.{ROOT_MESSAGE}"]
    while pending:
        full_name = pending.pop()
        name = def_name(full_name, file.package)
        if name in defs:
            continue
        if full_name not in messages.by_name:
            raise SystemExit(f"{full_name}: not in {proto} (imported types are unsupported)")
        message, docs = messages.by_name[full_name]
        properties: dict[str, Any] = {}
        for field in message.field:
            value = _field_schema(field, f"{name}.{field.name}", file.package, messages)
            if docs[field.name]:
                value["description"] = docs[field.name]
            properties[field.name] = value
            if field.type == _Type.TYPE_MESSAGE:
                pending.append(field.type_name)
        defs[name] = {"type": "object", "additionalProperties": False, "properties": properties}
        if docs[""]:
            defs[name]["description"] = docs[""]
    unknown = sorted(
        element
        for element in ENUMS
        if element.partition(".")[2]
        not in defs.get(element.partition(".")[0], {}).get("properties", {})
    )
    if unknown:
        raise SystemExit(f"ENUMS names fields the bundle does not have: {', '.join(unknown)}")
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": TITLE,
        "description": comments(file).get((_SYNTAX,), ""),
        "$ref": f"#/$defs/{ROOT_MESSAGE}",
        "$defs": defs,
    }


def _field_schema(
    field: descriptor_pb2.FieldDescriptorProto, where: str, package: str, messages: _Messages
) -> dict[str, Any]:
    """The schema of one field's value, by the shape check's rules. Whatever the loader
    cannot read (oneofs, maps, enums, bytes) stops generation rather than be guessed at."""
    if field.HasField("oneof_index") and not field.proto3_optional:
        raise SystemExit(f"{where}: oneof is not supported by the bundle loader")
    value: dict[str, Any]
    if field.type == _Type.TYPE_MESSAGE:
        target = messages.by_name.get(field.type_name)
        if target is not None and target[0].options.map_entry:
            raise SystemExit(f"{where}: map fields are not supported by the bundle loader")
        value = {"$ref": f"#/$defs/{def_name(field.type_name, package)}"}
    elif field.type in _SCALARS:
        value = dict(_SCALARS[field.type])
    elif field.type in INTEGER_RANGES:
        low, high = INTEGER_RANGES[field.type]
        value = {"type": "integer", "minimum": low, "maximum": high}
    else:
        raise SystemExit(f"{where}: field type {field.type} is not supported by the bundle loader")
    if where in ENUMS:
        if field.type != _Type.TYPE_STRING:
            raise SystemExit(f"{where}: ENUMS lists values for a field that is not a string")
        value["enum"] = list(ENUMS[where])
    if field.label == _Type.LABEL_REPEATED:
        value = {"type": "array", "items": value}
    return value


def schema_text(files: descriptor_pb2.FileDescriptorSet | None = None) -> str:
    schema = build_schema(files if files is not None else descriptor_set())
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_path(out: Path = OUT) -> Path:
    return out / Path(BUNDLE_PROTO).parent / SCHEMA_NAME


def write_bundle_schema(out: Path = OUT) -> Path:
    path = schema_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(schema_text(), encoding="utf-8")
    return path


if __name__ == "__main__":
    write_bundle_schema(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
