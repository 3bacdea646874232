"""What an upstream's answers get, compiled: the response side of the bundle.

Built at load, read by the check (to mark the requests whose answers need work, so the
rest never open an ext_proc stream) and by the response processor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_SESSION_TTL_SECONDS = 86400.0
# The list methods whose results are filtered, and the result key each one's items are in.
LIST_RESULT_KEYS: Mapping[str, str] = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}


class PinMode(StrEnum):
    ENFORCE = "enforce"  # a drifted or unpinned tool is hidden and its calls refused
    WARN = "warn"  # audited and counted only
    OFF = "off"


@dataclass(frozen=True, slots=True)
class RedactionPattern:
    kind: str  # what "[redacted:<kind>]" names
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class RedactionPolicy:
    secrets: bool = False  # the built-in detectors
    patterns: tuple[RedactionPattern, ...] = ()

    def __bool__(self) -> bool:
        return self.secrets or bool(self.patterns)


@dataclass(frozen=True, slots=True)
class PinPolicy:
    mode: PinMode = PinMode.OFF
    pins: Mapping[str, str] = field(default_factory=dict)  # tool name -> sha256 hex
    # The argument names each pinned definition declares (its inputSchema's properties),
    # where the pins file holds the definition: lint checks conditions against them.
    arguments: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.mode is not PinMode.OFF


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    bind: bool = False
    ttl_seconds: float = DEFAULT_SESSION_TTL_SECONDS


@dataclass(frozen=True, slots=True)
class ResponsePolicy:
    filter_lists: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    redact: RedactionPolicy = field(default_factory=RedactionPolicy)
    pins: PinPolicy = field(default_factory=PinPolicy)
    sessions: SessionPolicy = field(default_factory=SessionPolicy)
    # The JSON-RPC methods whose answers get work, so that the check decides whether to
    # mark a request with one set lookup per call (``with_methods`` fills it at load).
    methods: frozenset[str] = frozenset()
    # Whether checks enforce something the response side learned (bound sessions, pins).
    guards: bool = False

    def with_methods(self) -> ResponsePolicy:
        methods: set[str] = set()
        if self.filter_lists:
            methods.update(LIST_RESULT_KEYS)
        if self.pins.active:
            methods.add("tools/list")
        if self.redact:
            methods.add("tools/call")
        if self.sessions.bind:
            methods.add("initialize")
        guards = self.sessions.bind or self.pins.mode is PinMode.ENFORCE
        return replace(self, methods=frozenset(methods), guards=guards)
