"""The meaning pass for rate limits: check what each limit says, and compile it.

Beyond shape, a limit is refused when it could never work as written: a rate that is not a
rate, a cost no bucket could ever pay, a key nobody can count by, or a match that can never
apply (an unknown upstream, tools on an A2A agent, a tool no rule lets through).
"""

from __future__ import annotations

from collections.abc import Sequence

from policy_service.bundles.problems import (
    MCP_TARGET_KEYS,
    NAME,
    Problems,
    check_target_names,
)
from policy_service.gen.policy_service.bundle.v1 import bundle_pb2
from policy_service.policy.limits import (
    CompiledLimit,
    KeyDimension,
    KeyPart,
    StoreFailureMode,
)
from policy_service.policy.model import Effect, UpstreamPolicy
from policy_service.policy.rates import RateSyntaxError, parse_rate
from policy_service.policy.targets import CallTargets
from policy_service.request.model import CallTarget, TargetKind, UpstreamProtocol

MAX_BURST = 1_000_000_000
_KEY_WORDS = ", ".join(f"'{part.value}'" for part in KeyPart if part is not KeyPart.CLAIM)
_TARGET_KINDS = {
    "tools": TargetKind.TOOL,
    "resources": TargetKind.RESOURCE,
    "prompts": TargetKind.PROMPT,
    "methods": TargetKind.METHOD,
    "a2a_methods": TargetKind.A2A_METHOD,
}


def compile_limits(
    limits: Sequence[bundle_pb2.Limit],
    upstreams: Sequence[UpstreamPolicy],
    declared_upstreams: set[str],
    problems: Problems,
) -> tuple[CompiledLimit, ...]:
    """``declared_upstreams`` holds every name the bundle gives, even of upstreams that had
    problems of their own, so a limit is not blamed for another section's mistake."""
    compiled: list[CompiledLimit] = []
    names: set[str] = set()
    by_name = {upstream.name: upstream for upstream in upstreams}
    for index, raw in enumerate(limits):
        path = f"limits[{index}]"
        before = len(problems)
        if not NAME.match(raw.name):
            problems.add(f"{path}.name", "must be a short lower-case name like 'per-client'")
        elif raw.name in names:
            problems.add(f"{path}.name", f"duplicate limit name '{raw.name}'")
        names.add(raw.name)
        limit = _limit(raw, path, by_name, declared_upstreams, problems)
        if limit is not None and len(problems) == before:
            compiled.append(limit)
    return tuple(compiled)


def _limit(
    raw: bundle_pb2.Limit,
    path: str,
    by_name: dict[str, UpstreamPolicy],
    declared: set[str],
    problems: Problems,
) -> CompiledLimit | None:
    rate = None
    if not raw.rate:
        problems.add(f"{path}.rate", "is required, e.g. '600/min'")
    else:
        try:
            rate = parse_rate(raw.rate)
        except RateSyntaxError as exc:
            problems.add(f"{path}.rate", str(exc))
    burst = raw.burst if raw.HasField("burst") else (rate.count if rate else 1)
    burst_ok = 1 <= burst <= MAX_BURST
    if not burst_ok and raw.HasField("burst"):
        problems.add(f"{path}.burst", f"must be between 1 and {MAX_BURST:,}")
    elif not burst_ok:
        problems.add(
            f"{path}.burst",
            f"defaults to the rate's count ({burst:,}), above the {MAX_BURST:,} maximum; set burst",
        )
    cost = raw.cost if raw.HasField("cost") else 1
    if cost < 1:
        problems.add(f"{path}.cost", "must be at least 1")
    elif burst_ok and cost > burst:
        problems.add(
            f"{path}.cost", f"{cost} is more than the burst of {burst}: no call could ever pass"
        )
    key = _key(list(raw.key), f"{path}.key", problems)
    try:
        failure_mode = StoreFailureMode(raw.on_store_failure or StoreFailureMode.OPEN)
    except ValueError:
        problems.add(
            f"{path}.on_store_failure",
            f"must be 'open' or 'closed' (got '{raw.on_store_failure}')",
        )
        failure_mode = StoreFailureMode.OPEN
    match = raw.match
    for position, name in enumerate(match.upstreams):
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.add(
                f"{path}.match.upstreams[{position}]",
                f"unknown upstream '{name}'; known: {known}",
            )
    covered = [by_name[name] for name in (match.upstreams or by_name) if name in by_name]
    targets = {
        "tools": list(match.tools),
        "resources": list(match.resources),
        "prompts": list(match.prompts),
        "methods": list(match.methods),
        "a2a_methods": list(match.a2a_methods),
    }
    _check_reach(targets, key, covered, f"{path}.match", problems)
    if rate is None:
        return None
    return CompiledLimit(
        name=raw.name,
        rate=rate,
        burst=burst,
        cost=cost,
        key=key,
        upstreams=frozenset(match.upstreams),
        targets=CallTargets.compile(**targets),
        on_store_failure=failure_mode,
        shadow=raw.shadow,
    )


def _key(entries: list[str], path: str, problems: Problems) -> tuple[KeyDimension, ...]:
    dimensions: list[KeyDimension] = []
    for position, entry in enumerate(entries):
        if entry.startswith("claim:"):
            claim = entry.removeprefix("claim:")
            if not claim:
                problems.add(
                    f"{path}[{position}]", "'claim:' needs a claim name, e.g. 'claim:tenant'"
                )
                continue
            dimension = KeyDimension(KeyPart.CLAIM, claim)
        else:
            try:
                dimension = KeyDimension(KeyPart(entry))
            except ValueError:
                problems.add(
                    f"{path}[{position}]",
                    f"unknown key '{entry}'; use {_KEY_WORDS} or 'claim:<name>'",
                )
                continue
        if dimension in dimensions:
            problems.add(f"{path}[{position}]", f"'{entry}' is listed twice")
            continue
        dimensions.append(dimension)
    if len(dimensions) > 1 and KeyDimension(KeyPart.GLOBAL) in dimensions:
        others = ", ".join(f"'{d}'" for d in dimensions if d.part is not KeyPart.GLOBAL)
        problems.add(
            path,
            f"'global' means one bucket for everybody; it cannot be combined with other keys "
            f"(here: {others})",
        )
    return tuple(d for d in dimensions if d.part is not KeyPart.GLOBAL)


def _check_reach(
    targets: dict[str, list[str]],
    key: tuple[KeyDimension, ...],
    covered: list[UpstreamPolicy],
    path: str,
    problems: Problems,
) -> None:
    before = len(problems)
    check_target_names(targets, path, problems)
    protocols = {upstream.protocol for upstream in covered}
    if covered and UpstreamProtocol.MCP not in protocols:
        for name in MCP_TARGET_KEYS:
            if targets[name]:
                problems.add(f"{path}.{name}", "can never match: none of its upstreams speaks mcp")
    if covered and UpstreamProtocol.A2A not in protocols and targets["a2a_methods"]:
        problems.add(f"{path}.a2a_methods", "can never match: none of its upstreams speaks a2a")
    named = any(targets[name] for name in ("tools", "resources", "prompts"))
    if any(d.part is KeyPart.TOOL for d in key) and any(targets.values()) and not named:
        problems.add(
            path,
            "key 'tool' counts only tool, resource and prompt calls, and this match names none, "
            "so the limit never applies; drop 'tool' from key or name tools in match",
        )
    if len(problems) > before:
        return  # one explanation per mistake: the reach check below would only repeat it
    # An exact name that no rule lets through on any covered upstream: the call is always
    # refused before limits apply, so this part of the limit is dead (likely a typo).
    for name, entries in targets.items():
        kind = _TARGET_KINDS[name]
        speaking = [
            upstream
            for upstream in covered
            if upstream.protocol
            is (UpstreamProtocol.A2A if kind is TargetKind.A2A_METHOD else UpstreamProtocol.MCP)
        ]
        for position, entry in enumerate(entries):
            if "*" not in entry and speaking and not _allowed_anywhere(kind, entry, speaking):
                where = ", ".join(sorted(upstream.name for upstream in speaking))
                problems.add(
                    f"{path}.{name}[{position}]",
                    f"'{entry}' is never allowed by a rule on {where}, so the limit never applies",
                )


def _allowed_anywhere(kind: TargetKind, name: str, upstreams: list[UpstreamPolicy]) -> bool:
    target = CallTarget(kind, name, name, None)
    return any(_may_allow(upstream, target) for upstream in upstreams)


def _may_allow(upstream: UpstreamPolicy, target: CallTarget) -> bool:
    """Whether some call to ``target`` could be let through: an allow rule is reached before
    a deny rule that holds whatever the call's arguments (one without a condition)."""
    for rule in upstream.enforced_rules:
        if not rule.targets.matches(target):
            continue
        if rule.effect is Effect.ALLOW:
            return True
        if rule.condition is None:
            return False
    return False
