"""Lists filtered per caller: an item is listed when the caller could call it.

The same rules, scopes and client lists decide as for the call itself, with one thing
unknown: the arguments. A rule whose ``when:`` reads ``args`` is taken as possibly true
when it would allow (the tool is listed: some arguments may pass, and the call is still
checked with the real ones) and as not applying when it would deny (it refuses only some
calls, so it hides nothing). Every other condition is evaluated as for a call with no
arguments, and fails closed the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy_service.identity.principal import Principal
from policy_service.policy.conditions import ConditionInputs
from policy_service.policy.model import Effect, UpstreamPolicy
from policy_service.request.model import CallTarget, TargetKind

# Each list method: the call its items are used by, and the item key that names them.
_LISTED: Mapping[str, tuple[TargetKind, str, str]] = {
    "tools/list": (TargetKind.TOOL, "tools/call", "name"),
    "prompts/list": (TargetKind.PROMPT, "prompts/get", "name"),
    "resources/list": (TargetKind.RESOURCE, "resources/read", "uri"),
    "resources/templates/list": (TargetKind.RESOURCE, "resources/read", "uriTemplate"),
}


@dataclass(frozen=True, slots=True)
class Listing:
    """Decides which items of one caller's list answers it may see."""

    upstream: UpstreamPolicy
    principal: Principal

    def may_use(self, list_method: str, name: str) -> bool:
        kind, call_method, _ = _LISTED[list_method]
        upstream, principal = self.upstream, self.principal
        if not upstream.clients.admits(principal):
            return False
        target = CallTarget(kind, name, call_method, None, None)
        for rule in upstream.enforced_rules:
            if not rule.targets.matches(target):
                continue
            condition = rule.condition
            if condition is not None:
                if condition.reads_arguments:
                    if rule.effect is Effect.DENY:
                        continue  # refuses some arguments only: hides nothing
                else:
                    result = condition.evaluate(self._inputs(target))
                    applies = result if isinstance(result, bool) else rule.effect is Effect.DENY
                    if not applies:
                        continue
            if rule.effect is Effect.DENY or not rule.clients.admits(principal):
                return False
            needed = upstream.required_scopes | rule.scopes
            return needed <= principal.scopes
        return False  # default deny: nothing would allow the call

    def _inputs(self, target: CallTarget) -> ConditionInputs:
        principal = self.principal
        return ConditionInputs(
            args={},
            claims=principal.claims,
            principal={
                "subject": principal.subject,
                "client_id": principal.client_id or "",
                "issuer": principal.issuer,
                "credential": principal.credential.value,
                "scopes": sorted(principal.scopes),
            },
            request={
                "upstream": self.upstream.name,
                "protocol": self.upstream.protocol.value,
                "method": target.method,
                "target": target.name,
                "http_method": "POST",
                "path": self.upstream.path_prefix,
            },
        )

    def filter_items(self, list_method: str, items: list[Any]) -> tuple[list[Any], int]:
        """The items the caller may see, and how many were hidden. An item without a
        readable name is hidden: what can't be judged is not shown."""
        _, _, key = _LISTED[list_method]
        kept = []
        for item in items:
            name = item.get(key) if isinstance(item, dict) else None
            if isinstance(name, str) and self.may_use(list_method, name):
                kept.append(item)
        return kept, len(items) - len(kept)
