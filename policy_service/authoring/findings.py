"""What `lint` finds in a bundle that loads: rules that can never apply, and conditions that
will not do what they say.

A bundle with findings still loads and serves (the service must not refuse a bundle that
served yesterday); `lint` reports them and exits non-zero, so CI stops them first:

- a rule shadowed by an earlier one: the first matching rule decides, and an earlier rule
  without a condition that matches every call the later one matches leaves it nothing;
- a rule that names a target exactly (``tools: [get_quote]``) which an earlier rule of the
  other effect, without a condition, already matches: the later one never decides it;
- a ``when:`` whose result the type checker can only call "dyn" (``principal.client_id``):
  it fails at run time unless the value is a bool, and a failing condition makes a deny
  rule refuse, so it is almost always a missing comparison;
- a condition that reads a tool argument the tool does not declare, where the pins file
  holds the tool's definition (its inputSchema's properties).

Containment and overlap are decided soundly for exact names and for ``*`` patterns checked
against each other's text; two patterns whose overlap can't be shown that way (``get_*``
and ``*_quote``) are not reported, so every finding is real.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from policy_service.policy.model import CompiledBundle, CompiledRule, UpstreamPolicy
from policy_service.policy.targets import CallTargets, NameMatcher

_KINDS = ("tools", "resources", "prompts", "methods", "a2a_methods")
_ARGUMENT = re.compile(r"\bargs\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(['\"])(.*?)\2\s*\])")


@dataclass(frozen=True, slots=True)
class Finding:
    path: str  # e.g. upstreams[0].rules[2]
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def lint_findings(bundle: CompiledBundle) -> list[Finding]:
    findings: list[Finding] = []
    for index, upstream in enumerate(bundle.upstreams):
        findings.extend(_upstream_findings(upstream, f"upstreams[{index}]"))
    return findings


def _upstream_findings(upstream: UpstreamPolicy, path: str) -> Iterator[Finding]:
    rules = upstream.rules
    for position, rule in enumerate(rules):
        here = f"{path}.rules[{position}]"
        for earlier in rules[:position]:
            if earlier.dry_run or earlier.condition is not None:
                continue  # it does not always decide what it matches
            if _covers(earlier.targets, rule.targets):
                yield Finding(
                    here,
                    f"rule '{rule.name}' can never apply: rule '{earlier.name}' before it "
                    "matches every call it matches, and the first matching rule decides",
                )
                break
            if earlier.effect is not rule.effect:
                shared = _shared_target(earlier.targets, rule.targets)
                if shared is not None:
                    yield Finding(
                        here,
                        f"rule '{rule.name}' ({rule.effect}) and rule '{earlier.name}' "
                        f"({earlier.effect}) before it both match {shared}: "
                        f"'{earlier.name}' decides those calls",
                    )
        if rule.condition is not None:
            if rule.condition.result_is_dyn:
                yield Finding(
                    f"{here}.when",
                    "the result is a value read from the request, not known to be a bool: "
                    'compare it (e.g. principal.client_id == "ci"); a condition that '
                    "is not a bool fails, and a failing condition makes a deny rule refuse",
                )
            yield from _undeclared_arguments(upstream, rule, f"{here}.when")


def _covers(outer: CallTargets, inner: CallTargets) -> bool:
    """Whether every call ``inner`` matches, ``outer`` matches too."""
    if not inner:
        return False
    for kind in _KINDS:
        wide, narrow = getattr(outer, kind), getattr(inner, kind)
        if not all(wide.matches(name) for name in narrow.exact):
            return False
        if not all(_pattern_covers(wide, pattern) for pattern in narrow.patterns):
            return False
    return True


def _pattern_covers(wide: NameMatcher, pattern: re.Pattern[str]) -> bool:
    # ``pattern`` is a compiled glob; its text is recovered from the regex, with each
    # ".*" back to "*". Another glob that fullmatches that text, "*" included, covers every
    # name the pattern matches: a name rules can spell never holds a literal "*".
    text = _glob_text(pattern)
    return any(candidate.fullmatch(text) for candidate in wide.patterns)


def _glob_text(pattern: re.Pattern[str]) -> str:
    return "*".join(re.sub(r"\\(.)", r"\1", part) for part in pattern.pattern.split(".*"))


def _shared_target(earlier: CallTargets, later: CallTargets) -> str | None:
    """A target the later rule names exactly that the earlier rule already matches: the
    author named it expecting the later rule to decide it. (A later pattern, such as a
    closing ``tools: ["*"]`` deny, is a catch-all for what the earlier rules leave, and is
    not reported.)"""
    for kind in _KINDS:
        decided = getattr(earlier, kind)
        for name in sorted(getattr(later, kind).exact):
            if decided.matches(name):
                return f"{_singular(kind)} '{name}'"
    return None


def _singular(kind: str) -> str:
    return {"tools": "tool", "resources": "resource", "prompts": "prompt"}.get(kind, "method")


def _undeclared_arguments(
    upstream: UpstreamPolicy, rule: CompiledRule, path: str
) -> Iterator[Finding]:
    assert rule.condition is not None
    declared = upstream.responses.pins.arguments
    if not declared or not rule.condition.reads_arguments:
        return
    read = {found[1] or found[3] for found in _ARGUMENT.finditer(rule.condition.source)}
    for tool in sorted(declared):
        if not rule.targets.tools.matches(tool):
            continue
        missing = sorted(read - declared[tool])
        if missing:
            known = ", ".join(sorted(declared[tool])) or "none"
            yield Finding(
                path,
                f"reads args.{missing[0]}, which tool '{tool}' does not declare "
                f"(its pinned inputSchema has: {known})",
            )
