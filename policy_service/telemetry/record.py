"""What one check learned on its way, for the span, the audit event and the metrics.

The pipeline fills a ``CheckRecord`` as each phase runs; once the decision is made the
telemetry reads it, so a denial still says who was refused and what they asked for.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from policy_service.identity.principal import Principal
from policy_service.policy.model import CompiledBundle, UpstreamPolicy
from policy_service.ratelimits.limiter import RateLimitResult
from policy_service.request.model import A2aRequest, McpRequest


def new_decision_id() -> str:
    """32 hex digits: a 48-bit millisecond timestamp, then 80 random bits.

    Time first, so ids sort by when the decision was made (as UUIDv7 does) and a log
    search can narrow by time from the id alone.
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


@dataclass(frozen=True, slots=True)
class DryRunRecord:
    """What a dry-run rule or a dry-run bundle would have decided, never enforced."""

    source: str  # "rule" or "bundle"
    name: str  # the rule's name, or the dry-run bundle's revision
    decision: str  # "allow" or "deny"
    reason: str
    agrees: bool  # the same decision and reason as the enforced one
    missing_scopes: tuple[str, ...] = ()


@dataclass(slots=True)
class CheckRecord:
    decision_id: str
    bundle: CompiledBundle | None = None
    upstream: UpstreamPolicy | None = None
    route_tag: str | None = None  # Envoy's upstream tag, kept when it names no upstream
    parsed: McpRequest | A2aRequest | None = None
    principal: Principal | None = None
    limits: RateLimitResult | None = None
    dry_runs: tuple[DryRunRecord, ...] = ()
    condition_failure: str | None = None  # why a condition failed, when that decided

    @classmethod
    def new(cls) -> CheckRecord:
        return cls(new_decision_id())
