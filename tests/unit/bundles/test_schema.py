"""The bundle's JSON Schema, for editors, says what the loader says.

The schema (policy_service/gen/.../bundle.schema.json) is generated from bundle.proto by
protos/json_schema.py. These tests hold it to the loader: it is never stale, every bundle
the project ships validates against it, every fixture the loader refuses for its *shape* is
refused by the schema at the same place, and for every field of the proto the schema and
the shape check agree on which values are wrong. What only the meaning pass checks (names,
references, rates, duplicates...) is out of the schema's reach; ``lint`` stays the authority.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from policy_service.bundles import shape
from policy_service.bundles.loader import load_bundle, parse_yaml
from policy_service.bundles.schema import bundle_schema_text
from policy_service.errors import BundleError
from policy_service.gen.policy_service.bundle.v1 import bundle_pb2
from policy_service.policy.rates import parse_rate
from tests.support.bundles import write_test_bundle
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
FIXTURES = REPO / "tests" / "fixtures" / "bundles"
COMMITTED = REPO / "policy_service" / "gen" / "policy_service" / "bundle" / "v1"
BUNDLE = cast("Descriptor", bundle_pb2.Bundle.DESCRIPTOR)


GENERATOR = load_generator()
SPEC = GENERATOR.BUNDLE
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
        "bundle.schema.json is stale: run `python protos/generate.py`"
    )
    assert fresh.endswith(b"}\n")
    assert GENERATOR.schema_text(SPEC) == fresh.decode("utf-8"), "generation is not deterministic"


def test_the_package_ships_the_committed_schema() -> None:
    assert bundle_schema_text() == (COMMITTED / SPEC.file_name).read_text("utf-8")


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] == "https://policy-service.dev/schemas/bundle/v1/bundle.schema.json"
    assert SCHEMA["title"]
    assert SCHEMA["description"].startswith("Policy bundle v1: ")
    assert SCHEMA["$ref"] == "#/$defs/Bundle"


def test_integer_ranges_are_the_shape_checks() -> None:
    assert GENERATOR.INTEGER_RANGES == shape._INTEGER_RANGES


# -- bundles the project ships validate ------------------------------------------------------


def shipped_bundles() -> list[Path]:
    examples = [
        path
        for path in (REPO / "examples").rglob("*.yaml")
        if not path.name.endswith(".cases.yaml")
    ]
    return sorted(
        [*(FIXTURES / "valid").glob("*.yaml"), *(REPO / "deploy").rglob("bundle.yaml"), *examples]
    )


def test_the_project_ships_bundles_to_check() -> None:
    assert REPO / "deploy" / "bundle.yaml" in shipped_bundles()


@pytest.mark.parametrize("path", shipped_bundles(), ids=lambda path: str(path.relative_to(REPO)))
def test_shipped_bundle_validates(path: Path) -> None:
    document = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    assert [error.message for error in schema_errors(document)] == []


def readme_bundles() -> list[str]:
    """The README's YAML blocks that are bundles or parts of one (not the Envoy snippets)."""
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text("utf-8"), re.S)
    return [
        block
        for block in blocks
        if isinstance(yaml.safe_load(block), dict)
        and set(yaml.safe_load(block)) & set(BUNDLE.fields_by_name)
    ]


def test_readme_bundles_validate() -> None:
    blocks = readme_bundles()
    assert blocks, "the README shows no bundle"
    for block in blocks:
        assert [error.message for error in schema_errors(parse_yaml(block, "README.md"))] == []


def test_the_test_suites_bundle_validates(tmp_path: Path) -> None:
    limits = (
        "  - {name: per-client, rate: 600/MIN, burst: 60, key: [client]}\n"
        "  - name: trades\n"
        "    rate: 10/hour\n"
        "    key: [client, 'claim:tenant']\n"
        "    match: {upstreams: [fininfo], tools: [place_trade]}\n"
        "    on_store_failure: closed\n"
        "    shadow: true\n"
    )
    audit = "  include_arguments: true\n  redact_keys: [ssn]\n"
    bundle = write_test_bundle(tmp_path, denial_style="jsonrpc", limits=limits, audit=audit)
    document = parse_yaml(bundle.path.read_text(encoding="utf-8"), str(bundle.path))
    assert [error.message for error in schema_errors(document)] == []


# -- what the loader refuses for its shape, the schema refuses -------------------------------

SHAPE_FIXTURES = [
    path for path in sorted((FIXTURES / "invalid").glob("*.yaml")) if shape_problems(path)
]


def test_the_rule_finds_shape_fixtures() -> None:
    assert len(SHAPE_FIXTURES) >= 6, [path.name for path in SHAPE_FIXTURES]
    assert "limit_unknown_key_word.yaml" not in {path.name for path in SHAPE_FIXTURES}


@pytest.mark.parametrize("fixture", SHAPE_FIXTURES, ids=lambda path: path.stem)
def test_schema_refuses_what_the_shape_check_refuses_at_the_same_place(fixture: Path) -> None:
    document = parse_yaml(fixture.read_text(encoding="utf-8"), str(fixture))
    flagged = {loader_path(error.absolute_path) for error in schema_errors(document)}
    for path, message in shape_problems(fixture):
        # The schema reports an unknown key on the mapping that holds it.
        where = re.sub(r"\.?[^.\[\]]+$", "", path) if message.startswith("unknown key") else path
        assert where in flagged, f"{path}: {message} (schema flags: {sorted(flagged)})"


# -- field by field, the schema and the shape check agree ------------------------------------

SITES = list(field_sites(BUNDLE))


def test_schema_and_shape_check_agree_on_every_field() -> None:
    disagreements = []
    for trail, field in SITES:
        owner = trail[-1].message_type if trail else BUNDLE
        assert owner is not None
        has_enum = f"{owner.name}.{field.name}" in SPEC.enums
        values = SAMPLES + ([[sample] for sample in SAMPLES] if field.is_repeated else [])
        for value in values:
            document = place(trail, field, value)
            loader_refuses = bool(shape.check_shape(document, BUNDLE, "bundle.yaml"))
            schema_refuses = bool(schema_errors(document))
            if loader_refuses and not schema_refuses:
                disagreements.append(f"schema accepts {document!r}")
            if schema_refuses and not loader_refuses and not has_enum:
                disagreements.append(f"schema refuses {document!r}")
    assert disagreements == []
    assert len(SITES) >= 50


@pytest.mark.parametrize("rate", ["600/min", "600/MIN", " 10 / s ", "100/5m", "5000/hours"])
def test_schema_accepts_every_rate_spelling_the_loader_accepts(rate: str) -> None:
    parse_rate(rate)
    assert schema_errors({"limits": [{"rate": rate}]}) == []


# -- descriptions come from the proto's comments ---------------------------------------------


def test_every_comment_in_the_proto_is_a_description() -> None:
    elements = list(commented_elements(GENERATOR, SPEC.proto))
    assert len(elements) >= 50
    for element, comment in elements:
        found = description(SCHEMA, element)
        assert found is not None, f"{element} has a comment but no description"
        assert " ".join(found.split()) == comment, element


@pytest.mark.parametrize(
    ("element", "text"),
    [
        (
            "Upstream.path_prefix",
            'Path prefix the gateway routes to this upstream, e.g. "/fininfo/".',
        ),
        ("Bundle.version", 'Format version. Must be "v1".'),
        (
            "Audit.include_arguments",
            "Record the arguments of tools/call and prompts/get calls. Off by default: arguments"
            " can hold personal data. Values under sensitive keys are always redacted.",
        ),
        (
            "ClientList",
            "Which clients may use an upstream or a rule. Entries match the token's client id"
            " (client_id or azp claim; the API key id) or its subject.",
        ),
    ],
)
def test_descriptions_are_the_comments_unwrapped(element: str, text: str) -> None:
    assert description(SCHEMA, element) == text


def test_every_message_is_a_closed_object_with_the_protos_fields() -> None:
    messages = {field.message_type for _, field in SITES if field.message_type} | {BUNDLE}
    assert set(SCHEMA["$defs"]) == {message.name for message in messages}
    for message in messages:
        definition = SCHEMA["$defs"][message.name]
        assert definition["additionalProperties"] is False
        assert set(definition["properties"]) == set(message.fields_by_name)


# -- the enum table -------------------------------------------------------------------------


@pytest.mark.parametrize("element", sorted(SPEC.enums))
def test_enum_table_names_a_string_field_of_the_proto(element: str) -> None:
    message, field_name = element.split(".")
    descriptors = {
        field.message_type.name: field.message_type for _, field in SITES if field.message_type
    }
    descriptors[BUNDLE.name] = BUNDLE
    assert message in descriptors, f"ENUMS: no message {message} in bundle.proto"
    field = descriptors[message].fields_by_name.get(field_name)
    assert field is not None, f"ENUMS: {message} has no field {field_name}"
    assert field.type == FieldDescriptor.TYPE_STRING


# A bundle the loader accepts, with one of each message the enum table names.
_BASE_BUNDLE = """\
version: v1
issuers:
  - {name: corp, issuer: 'https://idp.example.com', jwks_url: 'https://idp.example.com/jwks.json',
     algorithms: [ES256]}
upstreams:
  - name: fininfo
    path_prefix: /fininfo/
    protocol: mcp
    resource: https://gw.example.com/fininfo/mcp
    rules:
      - {name: read, methods: [initialize]}
    responses:
      pins: {mode: 'off'}
limits:
  - {name: per-client, rate: 600/min, key: [client]}
"""


def first_instance(document: Any, descriptor: Descriptor, message: str) -> tuple[Any, str] | None:
    """The first mapping in ``document`` that is a ``message``, and its loader path."""
    if descriptor.name == message:
        return document, ""
    for key, value in document.items():
        field = descriptor.fields_by_name[key]
        if field.message_type is None:
            continue
        items = enumerate(value) if field.is_repeated else [(None, value)]
        for index, item in items:
            found = first_instance(item, field.message_type, message)
            if found is not None:
                here = key if index is None else f"{key}[{index}]"
                return found[0], f"{here}.{found[1]}" if found[1] else here
    return None


@pytest.mark.parametrize("element", sorted(SPEC.enums))
def test_enum_table_holds_exactly_what_the_loader_accepts(element: str, tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text(_BASE_BUNDLE)
    load_bundle(path, environ={})
    message, field_name = element.split(".")
    allowed = SPEC.enums[element]
    for value in [*allowed, "", "not-a-value", allowed[0].upper()]:
        document = yaml.safe_load(_BASE_BUNDLE)
        found = first_instance(document, BUNDLE, message)
        assert found is not None, f"add a {message} to _BASE_BUNDLE"
        mapping, where = found
        field = BUNDLE.file.message_types_by_name[message].fields_by_name[field_name]
        mapping[field_name] = [value] if field.is_repeated else value
        target = f"{where}.{field_name}" if where else field_name
        target += "[0]" if field.is_repeated else ""
        path.write_text(yaml.safe_dump(document))
        try:
            load_bundle(path, environ={})
            problems = []
        except BundleError as exc:
            problems = [problem.message for problem in exc.problems if problem.path == target]
        assert (value in allowed) == (not problems), f"{target}: {value!r}: {problems}"
        assert (value in allowed) == (not schema_errors(document)), f"{target}: {value!r}"
