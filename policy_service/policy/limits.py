"""Limits after compilation, and what one check asks of the bucket store.

A ``CompiledLimit`` is built once at bundle load. Per check, ``keys.claims_for`` turns the
limits a call matches into ``BucketClaim`` values (which bucket, how many tokens), and a
store answers with one ``BucketReading`` per claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from policy_service.policy.rates import Rate
from policy_service.policy.targets import CallTargets


class KeyPart(StrEnum):
    CLIENT = "client"  # client id (client_id / azp claim, API key id), else the subject
    SUBJECT = "subject"  # issuer + subject, so two issuers' "alice" stay apart
    UPSTREAM = "upstream"
    TOOL = "tool"  # tool name, resource URI or prompt name
    METHOD = "method"  # MCP or A2A method
    CLAIM = "claim"  # one claim's value, named in KeyDimension.claim
    GLOBAL = "global"


@dataclass(frozen=True, slots=True)
class KeyDimension:
    part: KeyPart
    claim: str = ""  # for KeyPart.CLAIM

    def __str__(self) -> str:
        return f"claim:{self.claim}" if self.part is KeyPart.CLAIM else self.part.value


class StoreFailureMode(StrEnum):
    OPEN = "open"  # the store is down: let the call through
    CLOSED = "closed"  # the store is down: refuse with 503


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    name: str
    rate: Rate
    burst: int
    cost: int
    key: tuple[KeyDimension, ...]  # empty: one global bucket
    upstreams: frozenset[str]  # empty: every upstream
    targets: CallTargets  # empty: every call on those upstreams
    on_store_failure: StoreFailureMode
    shadow: bool
    # What the buckets count by, for answers and logs: "client+tool", "global". Every
    # audit event names it, so it is spelled once, here.
    scope: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        scope = "+".join(str(dimension) for dimension in self.key) or "global"
        object.__setattr__(self, "scope", scope)

    @property
    def enforced(self) -> bool:
        return not self.shadow


@dataclass(frozen=True, slots=True)
class BucketClaim:
    """Take ``cost`` tokens from the bucket ``key`` of ``limit``."""

    limit: CompiledLimit
    key: str
    cost: int


@dataclass(frozen=True, slots=True)
class BucketReading:
    """A bucket's state after the check, as the store reports it."""

    remaining: int  # whole tokens left (after this call's take, when it was admitted)
    retry_after_ms: int  # 0 when the bucket had enough; else until it will have
    reset_ms: int  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class TakeResult:
    """The store's answer: admitted means every enforced bucket had enough and all took."""

    admitted: bool
    readings: tuple[BucketReading, ...]  # one per claim, in claim order
