"""What a rule or a limit can match: tool, resource and prompt names, MCP and A2A methods.

Rules and limits name their targets the same way, so one matcher serves both and a security
team learns one syntax: exact names plus ``*`` for any run of characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from policy_service.request.model import CallTarget, TargetKind


@dataclass(frozen=True, slots=True)
class NameMatcher:
    """Exact names plus ``*`` wildcards, compiled once."""

    exact: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def compile(cls, entries: list[str] | tuple[str, ...]) -> NameMatcher:
        exact = frozenset(entry for entry in entries if "*" not in entry)
        patterns = tuple(
            re.compile(".*".join(re.escape(part) for part in entry.split("*")), re.DOTALL)
            for entry in entries
            if "*" in entry
        )
        return cls(exact, patterns)

    def __bool__(self) -> bool:
        return bool(self.exact or self.patterns)

    def matches(self, name: str) -> bool:
        if name in self.exact:
            return True
        return any(pattern.fullmatch(name) for pattern in self.patterns)


@dataclass(frozen=True, slots=True)
class CallTargets:
    """The calls a rule or limit covers: one matcher per kind of target."""

    tools: NameMatcher = NameMatcher()
    resources: NameMatcher = NameMatcher()
    prompts: NameMatcher = NameMatcher()
    methods: NameMatcher = NameMatcher()
    a2a_methods: NameMatcher = NameMatcher()

    @classmethod
    def compile(
        cls,
        *,
        tools: list[str] | tuple[str, ...] = (),
        resources: list[str] | tuple[str, ...] = (),
        prompts: list[str] | tuple[str, ...] = (),
        methods: list[str] | tuple[str, ...] = (),
        a2a_methods: list[str] | tuple[str, ...] = (),
    ) -> CallTargets:
        return cls(
            NameMatcher.compile(tools),
            NameMatcher.compile(resources),
            NameMatcher.compile(prompts),
            NameMatcher.compile(methods),
            NameMatcher.compile(a2a_methods),
        )

    def __bool__(self) -> bool:
        return any((self.tools, self.resources, self.prompts, self.methods, self.a2a_methods))

    def matcher(self, kind: TargetKind) -> NameMatcher:
        if kind is TargetKind.TOOL:
            return self.tools
        if kind is TargetKind.RESOURCE:
            return self.resources
        if kind is TargetKind.PROMPT:
            return self.prompts
        if kind is TargetKind.METHOD:
            return self.methods
        return self.a2a_methods

    def matches(self, target: CallTarget) -> bool:
        return self.matcher(target.kind).matches(target.name)
