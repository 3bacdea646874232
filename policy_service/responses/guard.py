"""What the check side enforces from what the response side learned: sessions bound to
their principal, and tools whose definitions drifted from their pins.

One ``AnswerGuard`` is shared by the check pipeline and the response pipeline of a
process, over the shared state that every replica reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from policy_service.clock import SYSTEM_CLOCK, Clock
from policy_service.identity.principal import Principal
from policy_service.policy.model import UpstreamPolicy
from policy_service.policy.responses import PinMode
from policy_service.request.model import CallTarget, McpRequest, TargetKind
from policy_service.responses.sessions import SessionBindings, SessionVerdict
from policy_service.responses.shared import (
    InProcessState,
    SharedState,
    SharedStateUnavailableError,
)

# How long an observed definition is remembered: a list refreshes it, and an upstream
# not listed for this long is checked afresh by its next list.
OBSERVED_TTL_SECONDS = 7 * 86400.0


class GuardKind(StrEnum):
    """How a refusal is answered: each is the ``decisions.model.DenyKind`` of the same name
    (the check maps it; this layer does not import the decisions)."""

    FORBIDDEN = "FORBIDDEN"  # 403
    SESSION_GONE = "SESSION_GONE"  # 404, always: MCP clients then start a new session
    RESPONSE_STATE_UNAVAILABLE = "RESPONSE_STATE_UNAVAILABLE"  # 503


@dataclass(frozen=True, slots=True)
class GuardRefusal:
    reason: str  # session_unknown, session_principal_mismatch, tool_not_pinned, ...
    message: str
    kind: GuardKind  # how the refusal is answered


_STATE_UNAVAILABLE = GuardRefusal(
    "response_state_unavailable",
    "the gateway cannot check this session or tool right now; the call was refused",
    GuardKind.RESPONSE_STATE_UNAVAILABLE,
)


def _observed_key(upstream: str, tool: str) -> str:
    return f"pin:{upstream}:{tool}"


class AnswerGuard:
    def __init__(self, shared: SharedState | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.shared = shared or InProcessState(clock=clock)
        self.sessions = SessionBindings(self.shared, clock=clock)

    async def refusal(
        self,
        upstream: UpstreamPolicy,
        parsed: McpRequest,
        principal: Principal,
        targets: tuple[CallTarget, ...],
    ) -> GuardRefusal | None:
        """What the response side learned, enforced on an allowed request: its session must
        be the principal's own, and under pin enforcement each tool it calls must match its
        pin."""
        refusal = await self.session_refusal(upstream, parsed.session_id, principal)
        if refusal is not None:
            return refusal
        if upstream.responses.pins.mode is PinMode.ENFORCE:
            for target in targets:
                if target.kind is TargetKind.TOOL:
                    refusal = await self.tool_refusal(upstream, target.name)
                    if refusal is not None:
                        return refusal
        return None

    async def session_refusal(
        self, upstream: UpstreamPolicy, session_id: str | None, principal: Principal
    ) -> GuardRefusal | None:
        """A refusal when the request carries a session that is not this principal's."""
        policy = upstream.responses.sessions
        if not policy.bind or session_id is None:
            return None
        try:
            verdict = await self.sessions.verdict(
                upstream.name, session_id, principal, policy.ttl_seconds
            )
        except SharedStateUnavailableError:
            return _STATE_UNAVAILABLE
        # 404: what MCP clients read as "session gone, initialize again"; it tells a caller
        # replaying another's session id nothing about that session.
        if verdict is SessionVerdict.FOREIGN:
            return GuardRefusal(
                "session_principal_mismatch",
                "this session belongs to another principal; start a new session",
                GuardKind.SESSION_GONE,
            )
        if verdict is SessionVerdict.UNKNOWN:
            return GuardRefusal(
                "session_unknown",
                "this session is unknown or has ended; start a new session",
                GuardKind.SESSION_GONE,
            )
        return None

    async def tool_refusal(self, upstream: UpstreamPolicy, tool: str) -> GuardRefusal | None:
        """Under ``enforce``: a refusal for a tool with no pin, or whose definition was
        last seen different from its pin (by this replica or any other)."""
        policy = upstream.responses.pins
        if policy.mode is not PinMode.ENFORCE:
            return None
        pinned = policy.pins.get(tool)
        if pinned is None:
            return GuardRefusal(
                "tool_not_pinned",
                "this tool's definition has not been approved",
                GuardKind.FORBIDDEN,
            )
        try:
            observed = await self.shared.get(_observed_key(upstream.name, tool))
        except SharedStateUnavailableError:
            return _STATE_UNAVAILABLE
        if observed is not None and observed != pinned:
            return GuardRefusal(
                "tool_definition_changed",
                "this tool's definition changed since it was approved",
                GuardKind.FORBIDDEN,
            )
        return None

    async def observed(self, upstream: str, definitions: Mapping[str, str]) -> None:
        """Remember the definition hashes a tools/list showed, for every replica's checks."""
        for tool, digest in definitions.items():
            await self.shared.put(_observed_key(upstream, tool), digest, OBSERVED_TTL_SECONDS)
