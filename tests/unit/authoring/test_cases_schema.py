"""The case file's JSON Schema, for editors, says what ``policy-service test`` says.

The schema (policy_service/gen/.../cases.schema.json) is generated from cases.proto by
protos/json_schema.py, as the bundle's is from bundle.proto, and held to the case reader the
same way (test_bundle_schema.py): never stale, every case file the project ships validates,
every fixture refused for its shape is refused by the schema at the same place, and field by
field the schema and the shape check agree. Its ``enums`` and ``required`` tables hold
exactly what the case reader accepts and insists on.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml
from google.protobuf.descriptor import Descriptor

from policy_service.authoring.cases import DECISIONS, cases_schema_text, parse_cases
from policy_service.bundles import shape
from policy_service.bundles.loader import parse_yaml
from policy_service.errors import CaseFileError
from policy_service.gen.policy_service.cases.v1 import cases_pb2
from tests.support.schemas import (
    SAMPLES,
    commented_elements,
    description,
    field_sites,
    load_generator,
    loader_path,
    place,
    shape_problems,
)

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "cases"
COMMITTED = REPO / "policy_service" / "gen" / "policy_service" / "cases" / "v1"
CASE_FILE = cast("Descriptor", cases_pb2.CaseFile.DESCRIPTOR)
GENERATOR = load_generator()
SPEC = GENERATOR.CASES
SCHEMA: dict[str, Any] = json.loads((COMMITTED / SPEC.file_name).read_text("utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def schema_errors(document: Any) -> list[jsonschema.ValidationError]:
    return list(VALIDATOR.iter_errors(document))


# -- the file -------------------------------------------------------------------------------


def test_committed_schema_matches_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "protos" / "generate.py"), str(tmp_path)], check=True
    )
    fresh = GENERATOR.schema_path(SPEC, tmp_path).read_bytes()
    assert (COMMITTED / SPEC.file_name).read_bytes() == fresh, (
        "cases.schema.json is stale: run `python protos/generate.py`"
    )
    assert GENERATOR.schema_text(SPEC) == fresh.decode("utf-8"), "generation is not deterministic"


def test_the_package_ships_the_committed_schema() -> None:
    assert cases_schema_text() == (COMMITTED / SPEC.file_name).read_text("utf-8")


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] == "https://policy-service.dev/schemas/cases/v1/cases.schema.json"
    assert SCHEMA["title"]
    assert SCHEMA["description"].startswith("Policy tests v1: ")
    assert SCHEMA["$ref"] == "#/$defs/CaseFile"


# -- case files the project ships validate ---------------------------------------------------


def shipped_case_files() -> list[Path]:
    return sorted([*(REPO / "examples").glob("*/*.cases.yaml"), *(FIXTURES / "valid").glob("*")])


def test_the_project_ships_case_files_to_check() -> None:
    names = {path.parent.name for path in shipped_case_files()}
    assert {"finance", "per-team", "ci-bots", "a2a-agents", "valid"} <= names


@pytest.mark.parametrize("path", shipped_case_files(), ids=lambda path: str(path.relative_to(REPO)))
def test_shipped_case_file_validates(path: Path) -> None:
    document = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    assert [error.message for error in schema_errors(document)] == []


@pytest.mark.parametrize("path", shipped_case_files(), ids=lambda path: str(path.relative_to(REPO)))
def test_shipped_case_file_names_its_schema_for_editors(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix), f"{path.name} does not start with {prefix}..."
    assert (path.parent / first.removeprefix(prefix)).resolve() == COMMITTED / SPEC.file_name


def test_readme_cases_validate() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text("utf-8"), re.S)
    case_files = [block for block in blocks if "cases" in (yaml.safe_load(block) or {})]
    assert case_files, "the README shows no case file"
    for block in case_files:
        assert [error.message for error in schema_errors(parse_yaml(block, "README.md"))] == []


# -- what the case reader refuses for its shape, the schema refuses --------------------------

# YAML values JSON has no word for (a date): the schema, which speaks JSON, never sees them.
_BEYOND_JSON = "expected a JSON value"
SHAPE_FIXTURES = [
    path
    for path in sorted((FIXTURES / "invalid").glob("*.yaml"))
    if any(not message.startswith(_BEYOND_JSON) for _, message in shape_problems(path))
]


def test_the_rule_finds_shape_fixtures() -> None:
    names = {path.name for path in SHAPE_FIXTURES}
    assert len(names) >= 10, sorted(names)
    assert "call_two_targets.yaml" in names
    assert "unknown_upstream.yaml" not in names


@pytest.mark.parametrize("fixture", SHAPE_FIXTURES, ids=lambda path: path.stem)
def test_schema_refuses_what_the_shape_check_refuses_at_the_same_place(fixture: Path) -> None:
    document = parse_yaml(fixture.read_text(encoding="utf-8"), str(fixture))
    flagged = {loader_path(error.absolute_path) for error in schema_errors(document)}
    for path, message in shape_problems(fixture):
        if message.startswith(_BEYOND_JSON):
            continue
        # The schema reports an unknown key on the mapping that holds it, and a second
        # field of a oneof on that field.
        where = re.sub(r"\.?[^.\[\]]+$", "", path) if message.startswith("unknown key") else path
        assert any(found == where or found.startswith(f"{where}.") for found in flagged), (
            f"{path}: {message} (schema flags: {sorted(flagged)})"
        )


# -- field by field, the schema and the shape check agree ------------------------------------

SITES = list(field_sites(CASE_FILE))


def test_schema_and_shape_check_agree_on_every_field() -> None:
    disagreements = []
    for trail, field in SITES:
        owner = trail[-1].message_type if trail else CASE_FILE
        assert owner is not None
        has_enum = f"{owner.name}.{field.name}" in SPEC.enums
        values = SAMPLES + ([[sample] for sample in SAMPLES] if field.is_repeated else [])
        for value in values:
            document = place(trail, field, value)
            loader_refuses = bool(shape.check_shape(document, CASE_FILE, "bundle.cases.yaml"))
            # A lone field leaves out what the case reader requires; that is not its shape.
            errors = [error for error in schema_errors(document) if error.validator != "required"]
            if loader_refuses and not errors:
                disagreements.append(f"schema accepts {document!r}")
            if errors and not loader_refuses and not has_enum:
                disagreements.append(f"schema refuses {document!r}")
    assert disagreements == []
    assert len(SITES) >= 30


@pytest.mark.parametrize(
    "value",
    [{"x-a": "1"}, {"x-a": 1}, {"x-a": None}, {1: "x"}, ["x-a"]],
    ids=["strings", "a number", "nothing", "a number key", "a list"],
)
def test_a_map_of_strings_is_checked_entry_by_entry(value: Any) -> None:
    document = {"cases": [{"call": {"headers": value}}]}
    loader_refuses = bool(shape.check_shape(document, CASE_FILE, "bundle.cases.yaml"))
    errors = [error for error in schema_errors(document) if error.validator != "required"]
    assert loader_refuses == bool(errors) == (value != {"x-a": "1"})


@pytest.mark.parametrize(
    ("value", "shape_refuses", "schema_refuses"),
    [
        ({"a": [1, {"b": None}], "c": 1.5}, False, False),
        ({1: "x"}, True, True),
        # JSON keys are strings, so the schema sees a YAML number key only at the top, where
        # it says so; deeper down it is the shape check's to refuse.
        ({"a": {2: "x"}}, True, False),
        ("x", True, True),
        (None, True, True),
    ],
    ids=["json", "a number key", "a nested number key", "a string", "nothing"],
)
def test_free_form_json_is_any_mapping_with_string_keys(
    value: Any, shape_refuses: bool, schema_refuses: bool
) -> None:
    document = {"cases": [{"call": {"arguments": value}, "caller": {"claims": value}}]}
    problems = shape.check_shape(document, CASE_FILE, "bundle.cases.yaml")
    errors = [error for error in schema_errors(document) if error.validator != "required"]
    assert bool(problems) == shape_refuses
    assert bool(errors) == schema_refuses
    assert {problem.path.split(".")[1] for problem in problems} <= {"call", "caller"}


def test_two_targets_are_refused_by_both_and_one_by_neither() -> None:
    two = {"cases": [{"call": {"tool": "t", "prompt": "p"}}]}
    one = {"cases": [{"call": {"tool": "t"}}]}
    assert [p.message for p in shape.check_shape(two, CASE_FILE, "c.yaml")] == [
        "expected at most one of: tool, resource, prompt, method, a2a_method; got tool, prompt"
    ]
    assert [e for e in schema_errors(two) if e.validator != "required"] != []
    assert shape.check_shape(one, CASE_FILE, "c.yaml") == []
    assert [e for e in schema_errors(one) if e.validator != "required"] == []


# -- descriptions come from the proto's comments ---------------------------------------------


def test_every_field_of_the_proto_has_a_comment() -> None:
    commented = {element for element, _ in commented_elements(GENERATOR, SPEC.proto)}
    for trail, field in SITES:
        owner = trail[-1].message_type if trail else CASE_FILE
        assert owner is not None
        assert f"{owner.name}.{field.name}" in commented, f"{owner.name}.{field.name}"


def test_every_comment_in_the_proto_is_a_description() -> None:
    elements = list(commented_elements(GENERATOR, SPEC.proto))
    assert len(elements) >= 30
    for element, comment in elements:
        found = description(SCHEMA, element)
        assert found is not None, f"{element} has a comment but no description"
        assert " ".join(found.split()) == comment, element


def test_every_message_is_a_closed_object_with_the_protos_fields() -> None:
    messages = {
        field.message_type
        for _, field in SITES
        if field.message_type and field.message_type.full_name != shape.STRUCT
        if not field.message_type.GetOptions().map_entry
    } | {CASE_FILE}
    assert set(SCHEMA["$defs"]) == {message.name for message in messages}
    for message in messages:
        definition = SCHEMA["$defs"][message.name]
        assert definition["additionalProperties"] is False
        assert set(definition["properties"]) == set(message.fields_by_name)


# -- the enum and required tables -----------------------------------------------------------

# A case file the case reader accepts, with every field the tables could name.
_BASE: dict[str, Any] = {
    "cases": [
        {
            "name": "a",
            "caller": {"subject": "alice", "client_id": "c", "issuer": "corp", "scopes": ["s"]},
            "call": {
                "upstream": "files",
                "tool": "read_file",
                "arguments": {},
                "headers": {},
                "protocol_version": "2025-11-25",
            },
            "expect": {
                "decision": "deny",
                "reason": "r",
                "rule": "read",
                "missing_scopes": [],
                "status": 403,
                "dry_run": [{"name": "n", "decision": "deny", "reason": "r"}],
            },
            "repeat": 1,
        }
    ]
}


def problems_at(document: Any, path: str) -> list[str]:
    try:
        parse_cases(document, "bundle.cases.yaml", {})
    except CaseFileError as exc:
        return [problem.message for problem in exc.problems if problem.path == path]
    return []


def test_the_base_case_file_is_accepted() -> None:
    assert parse_cases(_BASE, "bundle.cases.yaml", {})
    assert schema_errors(_BASE) == []


def test_enum_table_holds_exactly_what_the_case_reader_accepts() -> None:
    assert dict(SPEC.enums) == {"Expectation.decision": DECISIONS}
    for value in [*DECISIONS, "", "denied", "ALLOW"]:
        document = copy.deepcopy(_BASE)
        document["cases"][0]["expect"]["decision"] = value
        accepted = value in DECISIONS
        assert accepted == (not problems_at(document, "cases[0].expect.decision")), value
        assert accepted == (not schema_errors(document)), value


def without(document: Any, trail: list[str]) -> tuple[Any, str]:
    """``document`` with the key at ``trail`` removed, and that key's path."""
    copied = copy.deepcopy(document)
    node, path = copied, ""
    for key in trail[:-1]:
        node = node[key][0] if key == "cases" else node[key]
        path = f"{path}.{key}[0]" if key == "cases" else f"{path}.{key}"
    del node[trail[-1]]
    return copied, f"{path}.{trail[-1]}".lstrip(".")


# Every field of _BASE, as "Message.field" -> the keys that lead to it.
_BASE_FIELDS = {
    "CaseFile.cases": ["cases"],
    **{f"Case.{key}": ["cases", key] for key in ("name", "caller", "call", "expect", "repeat")},
    **{
        f"Caller.{key}": ["cases", "caller", key]
        for key in ("subject", "client_id", "issuer", "scopes")
    },
    **{
        f"Call.{key}": ["cases", "call", key]
        for key in ("upstream", "arguments", "headers", "protocol_version")
    },
    **{
        f"Expectation.{key}": ["cases", "expect", key]
        for key in ("decision", "reason", "rule", "missing_scopes", "status", "dry_run")
    },
}


def test_required_table_names_fields_of_the_base() -> None:
    assert set(SPEC.required) <= set(_BASE_FIELDS)


@pytest.mark.parametrize("element", sorted(_BASE_FIELDS))
def test_required_table_holds_what_the_case_reader_insists_on(element: str) -> None:
    trail = _BASE_FIELDS[element]
    document, path = without(_BASE, trail)
    # Without its `cases`, a file is refused as a whole, at the top.
    refused = bool(problems_at(document, "" if trail == ["cases"] else path))
    required = element in SPEC.required
    assert refused == required, path
    assert bool(schema_errors(document)) == required, path
