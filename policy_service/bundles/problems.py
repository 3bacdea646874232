"""The problem list every meaning check appends to, and checks shared by rules and limits.

Builders append instead of raising, so an author sees all of their mistakes in one run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from policy_service.errors import BundleProblem
from policy_service.request.a2a import A2A_METHODS

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

# MCP methods whose target has its own list: naming them under `methods` would be a trap.
MCP_TARGET_METHODS = {
    "tools/call": "tools",
    "resources/read": "resources",
    "resources/subscribe": "resources",
    "resources/unsubscribe": "resources",
    "prompts/get": "prompts",
}
MCP_TARGET_KEYS = ("tools", "resources", "prompts", "methods")


class Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[BundleProblem] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(BundleProblem(self.source, path, message))

    def __len__(self) -> int:
        return len(self.items)


def check_target_names(targets: Mapping[str, Sequence[str]], path: str, problems: Problems) -> None:
    """Entries that are empty, methods that have their own list, unknown A2A methods."""
    for key, entries in targets.items():
        for index, entry in enumerate(entries):
            if not entry:
                problems.add(f"{path}.{key}[{index}]", "must not be empty")
    for index, method in enumerate(targets.get("methods", ())):
        if method in MCP_TARGET_METHODS:
            own = MCP_TARGET_METHODS[method]
            problems.add(
                f"{path}.methods[{index}]",
                f"'{method}' is matched by '{own}:' (name the {own}, or '*' for all)",
            )
    for index, method in enumerate(targets.get("a2a_methods", ())):
        if "*" not in method and method not in A2A_METHODS:
            problems.add(
                f"{path}.a2a_methods[{index}]",
                f"unknown A2A method '{method}'; known: {', '.join(sorted(A2A_METHODS))}",
            )
