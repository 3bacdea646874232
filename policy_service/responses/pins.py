"""Tool-definition pins: the hash of what a tool is, compared with what was approved.

A tool's definition is its name, title, description, input and output schema and
annotations. The hash is SHA-256 over their canonical JSON (keys sorted, no whitespace,
UTF-8), so that the same definition always hashes the same whatever order or spacing the
server sends; anything else about the tool (``_meta``, icons) is left out, because servers
may vary it per answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from policy_service.policy.responses import PinPolicy

DEFINITION_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def definition_of(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a tools/list item that is pinned."""
    return {key: tool[key] for key in DEFINITION_KEYS if key in tool}


def definition_hash(tool: Mapping[str, Any]) -> str:
    definition = definition_of(tool)
    try:
        canonical = orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits: the standard library writes it exactly
        canonical = json.dumps(
            definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    return hashlib.sha256(canonical).hexdigest()


class PinStatus(StrEnum):
    PINNED = "pinned"  # the definition is the approved one
    CHANGED = "changed"  # differs from its pin
    UNPINNED = "unpinned"  # no pin for this name


@dataclass(frozen=True, slots=True)
class PinCheck:
    tool: str
    status: PinStatus
    sha256: str


def check_tool(policy: PinPolicy, tool: Mapping[str, Any]) -> PinCheck:
    name = str(tool.get("name", ""))
    digest = definition_hash(tool)
    pinned = policy.pins.get(name)
    if pinned is None:
        return PinCheck(name, PinStatus.UNPINNED, digest)
    return PinCheck(name, PinStatus.PINNED if pinned == digest else PinStatus.CHANGED, digest)
