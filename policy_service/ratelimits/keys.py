"""Which buckets a call takes from: pure, from the compiled limits and the request.

A bucket id is ``<limit name>:<digest of the key values>``. The digest keeps client ids,
subjects and claim values out of Redis key names (they are personal data and may be long)
while the same values always land in the same bucket.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from policy_service.identity.principal import Principal
from policy_service.policy.limits import BucketClaim, CompiledLimit, KeyDimension, KeyPart
from policy_service.request.model import CallTarget, TargetKind

_NAMED_TARGETS = (TargetKind.TOOL, TargetKind.RESOURCE, TargetKind.PROMPT)


def claims_for(
    limits: Sequence[CompiledLimit],
    upstream: str,
    principal: Principal,
    targets: Sequence[CallTarget],
) -> tuple[BucketClaim, ...]:
    """Every bucket the request takes from, each once, with the costs of its calls summed
    (an MCP batch can hit one bucket several times)."""
    taken: dict[str, tuple[CompiledLimit, int]] = {}  # bucket id -> (limit, summed cost)
    for limit in limits:
        if limit.upstreams and upstream not in limit.upstreams:
            continue
        for target in targets or (None,):
            if not applies(limit, target):
                continue
            bucket = bucket_id(limit, upstream, principal, target)  # names its limit
            cost = taken[bucket][1] if bucket in taken else 0
            taken[bucket] = (limit, cost + limit.cost)
    return tuple(BucketClaim(limit, bucket, cost) for bucket, (limit, cost) in taken.items())


_DERIVED_PER_UPSTREAM = 64  # a principal's remembered claims: upstreams it called lately


def cached_claims_for(
    limits: tuple[CompiledLimit, ...],
    upstream: str,
    principal: Principal,
    targets: Sequence[CallTarget],
) -> tuple[BucketClaim, ...]:
    """``claims_for``, remembered on the principal: a caller's checks mostly repeat the same
    calls, and a bucket id costs a digest per limit. A hit needs the same bundle's limits
    (the very tuple: a reload makes new ones) and calls of the same kinds and names."""
    calls = tuple((target.kind, target.name, target.method) for target in targets)
    derived = principal.derived
    key = ("claims", upstream)
    cached = derived.get(key)
    if cached is not None and cached[0] is limits and cached[1] == calls:
        claims: tuple[BucketClaim, ...] = cached[2]
        return claims
    claims = claims_for(limits, upstream, principal, targets)
    if len(derived) >= _DERIVED_PER_UPSTREAM:
        derived.clear()
    derived[key] = (limits, calls, claims)
    return claims


def applies(limit: CompiledLimit, target: CallTarget | None) -> bool:
    """Does the limit cover this call (``None``: a request without calls, e.g. a GET stream)?"""
    if target is None:
        return not limit.targets and not _keys_by_target(limit)
    if limit.targets and not limit.targets.matches(target):
        return False
    # A limit counted per tool covers only calls that name one.
    return target.kind in _NAMED_TARGETS or not _keys_by_target(limit)


def _keys_by_target(limit: CompiledLimit) -> bool:
    return any(dimension.part is KeyPart.TOOL for dimension in limit.key)


def bucket_id(
    limit: CompiledLimit, upstream: str, principal: Principal, target: CallTarget | None
) -> str:
    if not limit.key:
        return f"{limit.name}:global"
    values = [_value(dimension, upstream, principal, target) for dimension in limit.key]
    digest = hashlib.blake2b("\x00".join(values).encode(), digest_size=16).hexdigest()
    return f"{limit.name}:{digest}"


def _value(
    dimension: KeyDimension, upstream: str, principal: Principal, target: CallTarget | None
) -> str:
    part = dimension.part
    if part is KeyPart.CLIENT:
        # Prefixed, so a client id can never collide with another principal's subject.
        if principal.client_id:
            return f"{principal.issuer}/client/{principal.client_id}"
        return f"{principal.issuer}/subject/{principal.subject}"
    if part is KeyPart.SUBJECT:
        return f"{principal.issuer}/{principal.subject}"
    if part is KeyPart.UPSTREAM:
        return upstream
    if part is KeyPart.TOOL:
        return target.name if target is not None else ""
    if part is KeyPart.METHOD:
        return target.method if target is not None else ""
    if part is KeyPart.CLAIM:
        # A missing claim is its own shared bucket: a token cannot dodge the limit by
        # lacking the claim, it only shares with others that lack it.
        claim = principal.claims.get(dimension.claim)
        if isinstance(claim, str):
            return "s:" + claim
        return "j:" + json.dumps(claim, sort_keys=True)
    return ""
