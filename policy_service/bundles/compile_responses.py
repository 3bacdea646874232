"""The meaning pass for an upstream's `responses:` section, and its pins file."""

from __future__ import annotations

import re
from typing import cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor

from policy_service.bundles.files import BundleFileError, BundleFiles
from policy_service.bundles.problems import Problems
from policy_service.bundles.shape import check_shape
from policy_service.bundles.yaml_text import parse_yaml
from policy_service.errors import BundleError
from policy_service.gen.policy_service.bundle.v1 import bundle_pb2
from policy_service.gen.policy_service.pins.v1 import pins_pb2
from policy_service.policy.responses import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SESSION_TTL_SECONDS,
    PinMode,
    PinPolicy,
    RedactionPattern,
    RedactionPolicy,
    ResponsePolicy,
    SessionPolicy,
)
from policy_service.request.model import UpstreamProtocol

_PIN_FILE = cast("Descriptor", pins_pb2.PinFile.DESCRIPTOR)
_KIND = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Constructs whose matching time is not linear in the text, or that RE2 lacks: a pattern
# scans every tool result of the upstream, so it must not be one an answer can stall.
_NON_LINEAR = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=")
# A repeated group whose own last item repeats or is optional, like (a+)+ or (\w*\s?)*:
# the ways to split a run between the two repetitions grow exponentially, and Python's
# engine tries them all when a match fails. (\d+\.)+ is fine: the dot separates the runs.
_NESTED_REPEAT = re.compile(r"(?<!\\)(?:[*+?]|\{\d+,\d*\})\)(?:[*+]|\{\d+,)")
_MIN_BODY_BYTES = 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024


def compile_responses(
    upstream: bundle_pb2.Upstream,
    protocol: UpstreamProtocol,
    path: str,
    files: BundleFiles,
    problems: Problems,
) -> ResponsePolicy:
    """The upstream's response policy. MCP upstreams filter lists unless told not to."""
    if protocol is not UpstreamProtocol.MCP:
        if upstream.HasField("responses"):
            problems.add(f"{path}.responses", "answers can only be processed for mcp upstreams")
        return ResponsePolicy()
    section = upstream.responses
    path = f"{path}.responses"
    max_body = DEFAULT_MAX_BODY_BYTES
    if section.HasField("max_body_bytes"):
        max_body = section.max_body_bytes
        if not _MIN_BODY_BYTES <= max_body <= _MAX_BODY_BYTES:
            problems.add(
                f"{path}.max_body_bytes",
                f"must be between {_MIN_BODY_BYTES} and {_MAX_BODY_BYTES} bytes",
            )
    return ResponsePolicy(
        filter_lists=section.filter_lists if section.HasField("filter_lists") else True,
        max_body_bytes=max_body,
        redact=_redaction(section, f"{path}.redact", problems),
        pins=_pins(section.pins, upstream.name, f"{path}.pins", files, problems),
        sessions=_sessions(section.sessions, f"{path}.sessions", problems),
    ).with_methods()


def _redaction(section: bundle_pb2.Responses, path: str, problems: Problems) -> RedactionPolicy:
    if not section.HasField("redact"):
        return RedactionPolicy()
    redact = section.redact
    patterns: list[RedactionPattern] = []
    kinds: set[str] = set()
    for index, entry in enumerate(redact.patterns):
        where = f"{path}.patterns[{index}]"
        if not _KIND.match(entry.name):
            problems.add(f"{where}.name", "must be a short lower-case name like 'employee_id'")
        elif entry.name in kinds:
            problems.add(f"{where}.name", f"duplicate pattern name '{entry.name}'")
        kinds.add(entry.name)
        if _NON_LINEAR.search(entry.regex):
            problems.add(
                f"{where}.regex", "must not use lookaround or backreferences (RE2 syntax only)"
            )
            continue
        if _NESTED_REPEAT.search(entry.regex):
            problems.add(
                f"{where}.regex",
                "must not repeat a group that ends in a repetition, like (a+)+: it can "
                "take exponential time on a tool result",
            )
            continue
        try:
            compiled = re.compile(entry.regex)
        except re.error as exc:
            problems.add(f"{where}.regex", f"is not a regular expression: {exc.msg}")
            continue
        if not entry.regex or compiled.fullmatch(""):
            problems.add(f"{where}.regex", "must not match the empty string")
            continue
        patterns.append(RedactionPattern(entry.name, compiled))
    secrets = redact.secrets if redact.HasField("secrets") else True
    return RedactionPolicy(secrets=secrets, patterns=tuple(patterns))


def _sessions(section: bundle_pb2.Sessions, path: str, problems: Problems) -> SessionPolicy:
    ttl = DEFAULT_SESSION_TTL_SECONDS
    if section.HasField("ttl_seconds"):
        ttl = section.ttl_seconds
        if not 1 <= ttl <= 30 * 86400:
            problems.add(f"{path}.ttl_seconds", "must be between 1 second and 30 days")
    return SessionPolicy(bind=section.bind, ttl_seconds=ttl)


def _pins(
    section: bundle_pb2.Pins, upstream: str, path: str, files: BundleFiles, problems: Problems
) -> PinPolicy:
    try:
        mode = PinMode(section.mode or PinMode.OFF)
    except ValueError:
        problems.add(f"{path}.mode", "must be 'enforce', 'warn' or 'off'")
        return PinPolicy()
    if not section.file:
        if mode is not PinMode.OFF:
            problems.add(
                f"{path}.file",
                "is needed with mode enforce or warn: write it with `policy-service pin`",
            )
        return PinPolicy(mode)
    pins, arguments = read_pin_file(files, section.file, upstream, f"{path}.file", problems)
    return PinPolicy(mode, pins, arguments)


def read_pin_file(
    files: BundleFiles, reference: str, upstream: str, path: str, problems: Problems
) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    """Tool name -> pinned SHA-256, and tool name -> the argument names its pinned
    definition declares, from the pins file ``reference`` names."""
    try:
        name = files.resolve(reference)
        text = files.read(name).decode("utf-8")
    except BundleFileError as exc:
        problems.add(path, f"file '{reference}' {exc.message}")
        return {}, {}
    except UnicodeDecodeError:
        problems.add(path, f"file '{reference}' is not UTF-8 text")
        return {}, {}
    try:
        document = parse_yaml(text, reference)
    except BundleError as exc:
        problems.items.extend(exc.problems)
        return {}, {}
    shape = check_shape(document, _PIN_FILE, reference)
    if shape:
        problems.items.extend(shape)
        return {}, {}
    message = pins_pb2.PinFile()
    json_format.ParseDict(document, message)
    if message.upstream != upstream:
        problems.add(
            path,
            f"file '{reference}' pins upstream '{message.upstream}', not '{upstream}'",
        )
    pins: dict[str, str] = {}
    arguments: dict[str, frozenset[str]] = {}
    for index, pin in enumerate(message.tools):
        if not pin.name:
            problems.add(f"{path}: tools[{index}].name", "must not be empty")
        elif pin.name in pins:
            problems.add(f"{path}: tools[{index}].name", f"duplicate pin for '{pin.name}'")
        if not _SHA256.match(pin.sha256):
            problems.add(f"{path}: tools[{index}].sha256", "must be 64 lower-case hex digits")
        pins[pin.name] = pin.sha256
        declared = _declared_arguments(json_format.MessageToDict(pin.definition))
        if declared is not None:
            arguments[pin.name] = declared
    return pins, arguments


def _declared_arguments(definition: dict[str, object]) -> frozenset[str] | None:
    schema = definition.get("inputSchema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return frozenset(properties) if isinstance(properties, dict) else None
