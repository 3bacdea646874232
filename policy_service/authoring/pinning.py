"""Tool-definition pins from a live MCP server: read with the MCP SDK, written for review.

``policy-service pin`` lists the server's tools (every page), hashes each definition the
way the gateway does (``responses.pins.definition_hash``), and writes the pins file a
bundle names under ``responses.pins.file``. The file holds each definition in full beside
its hash, so a reviewer reads what is being approved, and a diff of the file shows exactly
what changed on the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from policy_service.errors import ConfigError
from policy_service.responses.pins import definition_hash, definition_of

_MAX_PAGES = 1000  # a server paging forever is refused, not followed forever


@dataclass(frozen=True, slots=True)
class PinChanges:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> str:
        parts = []
        kinds = (("new", self.added), ("changed", self.changed), ("gone", self.removed))
        for label, names in kinds:
            if names:
                parts.append(f"{len(names)} {label}: {', '.join(names)}")
        return "; ".join(parts) if parts else "no changes"


@dataclass(frozen=True, slots=True)
class PinSet:
    upstream: str
    tools: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # name -> definition

    def hashes(self) -> dict[str, str]:
        return {name: definition_hash(tool) for name, tool in self.tools.items()}

    def changes_from(self, previous: Mapping[str, str]) -> PinChanges:
        now = self.hashes()
        return PinChanges(
            added=tuple(sorted(set(now) - set(previous))),
            changed=tuple(sorted(n for n in now if n in previous and previous[n] != now[n])),
            removed=tuple(sorted(set(previous) - set(now))),
        )

    def render(self, source: str, moment: datetime | None = None) -> str:
        when = (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        document = {
            "upstream": self.upstream,
            "tools": [
                {"name": name, "sha256": digest, "definition": self.tools[name]}
                for name, digest in sorted(self.hashes().items())
            ],
        }
        header = (
            f"# Tool definitions approved for upstream {self.upstream!r}.\n"
            f"# Written by `policy-service pin` from {source} at {when}.\n"
            "# Review the definitions (a diff shows what changed on the server), then sign\n"
            "# the bundle. The gateway enforces the sha256 values; the definitions are for\n"
            "# the reviewer.\n"
        )
        body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
        return header + body


def pin_set(upstream: str, tools: Sequence[Mapping[str, Any]]) -> PinSet:
    """The pins of ``tools`` (tools/list items as the server sent them)."""
    definitions: dict[str, dict[str, Any]] = {}
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("the server listed a tool without a name")
        if name in definitions:
            raise ConfigError(f"the server listed tool {name!r} twice")
        definitions[name] = definition_of(tool)
    return PinSet(upstream, definitions)


def existing_hashes(path: Path) -> dict[str, str]:
    """The pins a file holds now (nothing if there is no file yet)."""
    if not path.exists():
        return {}
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} cannot be read as a pins file: {exc}") from None
    tools = document.get("tools") if isinstance(document, dict) else None
    return {
        str(tool["name"]): str(tool["sha256"])
        for tool in tools or ()
        if isinstance(tool, dict) and "name" in tool and "sha256" in tool
    }


async def list_server_tools(
    url: str, headers: Mapping[str, str], *, timeout_seconds: float = 30.0
) -> list[dict[str, Any]]:
    """Every tool the MCP server at ``url`` lists, each as the JSON the server sent."""
    import anyio
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    tools: list[dict[str, Any]] = []
    with anyio.fail_after(timeout_seconds):
        async with (
            httpx2.AsyncClient(
                headers=dict(headers), timeout=httpx2.Timeout(timeout_seconds)
            ) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            cursor: str | None = None
            for _ in range(_MAX_PAGES):
                page = await client.list_tools(cursor=cursor, cache_mode="bypass")
                # Only what the server set: the SDK's defaults would change the hash.
                tools.extend(
                    tool.model_dump(mode="json", by_alias=True, exclude_unset=True)
                    for tool in page.tools
                )
                cursor = page.next_cursor
                if not cursor:
                    return tools
    raise ConfigError(f"the server at {url} listed more than {_MAX_PAGES} pages of tools")
