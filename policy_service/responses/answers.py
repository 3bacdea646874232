"""One answer's JSON-RPC messages, rewritten by the plan: lists filtered and checked against
their pins, tool results redacted. Pure: the shared state is written by the caller, from
what the ``AnswerReport`` says was seen."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from policy_service.identity.principal import Principal
from policy_service.policy.model import UpstreamPolicy
from policy_service.policy.responses import LIST_RESULT_KEYS, PinMode
from policy_service.responses.listing import Listing
from policy_service.responses.pins import PinCheck, PinStatus, check_tool
from policy_service.responses.plan import PlannedCall, ResponsePlan
from policy_service.responses.redaction import Redactor

# JSON-RPC error code of an answer the gateway could not check: outside the reserved
# -32768..-32000 range, like the gateway's other refusals (the HTTP status it stands for).
UNCHECKED_ANSWER_CODE = 502


@dataclass(slots=True)
class AnswerReport:
    """What processing an answer did: counts and names only, never content."""

    hidden: Counter[str] = field(default_factory=Counter)  # list method -> items hidden
    redacted: Counter[str] = field(default_factory=Counter)  # kind -> matches replaced
    pins: list[PinCheck] = field(default_factory=list)  # tools seen drifted or unpinned
    observed: dict[str, str] = field(default_factory=dict)  # pinned tool -> hash seen
    rewritten: int = 0  # messages changed
    failure: str | None = None  # why the answer became an error, if it did


class AnswerRewriter:
    def __init__(self, upstream: UpstreamPolicy, plan: ResponsePlan) -> None:
        self.upstream = upstream
        self.plan = plan
        self.report = AnswerReport()
        policy = upstream.responses
        self._redactor = Redactor.for_policy(policy.redact) if policy.redact else None
        principal = plan.principal
        self._listing = (
            Listing(upstream, principal) if principal is not None and policy.filter_lists else None
        )
        self._principal: Principal | None = principal

    def document(self, document: Any) -> Any | None:
        """A parsed JSON body or SSE data: the rewritten document, or None if unchanged."""
        if isinstance(document, dict):
            return self.message(document)
        if isinstance(document, list):
            rewritten = [
                self.message(item) if isinstance(item, dict) else None for item in document
            ]
            if all(item is None for item in rewritten):
                return None
            pairs = zip(rewritten, document, strict=True)
            return [new if new is not None else old for new, old in pairs]
        return None

    def message(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """One JSON-RPC message: rewritten if it answers a planned call, else None."""
        if "method" in message:
            return self._server_message(message)
        call = self.plan.call_for(message.get("id"))
        if call is None:
            return None
        if "error" in message and call.method == "tools/call":
            # A tool's failure can quote what it read as well as its result can.
            error = self._redacted(message["error"])
            return None if error is None else self._rewritten({**message, "error": error})
        if "result" not in message:
            return None
        result = message["result"]
        if not isinstance(result, dict):
            return None
        new_result = self._result(call, result)
        if new_result is None:
            return None
        return self._rewritten({**message, "result": new_result})

    def _server_message(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """A notification or request the server sends in a tool call's answer (progress,
        log messages, elicitation): its text reaches the client like the result's does."""
        if not any(call.method == "tools/call" for call in self.plan.calls):
            return None
        params = self._redacted(message.get("params"))
        return None if params is None else self._rewritten({**message, "params": params})

    def _redacted(self, value: Any) -> Any | None:
        """``value`` redacted, or None when it held nothing to redact."""
        if self._redactor is None:
            return None
        before = sum(self._redactor.found.values())
        redacted = self._redactor.value(value)
        self.report.redacted = Counter(self._redactor.found)
        return redacted if sum(self._redactor.found.values()) > before else None

    def _rewritten(self, message: dict[str, Any]) -> dict[str, Any]:
        self.report.rewritten += 1
        return message

    def _result(self, call: PlannedCall, result: dict[str, Any]) -> dict[str, Any] | None:
        if call.method == "tools/call":
            if self._redactor is None:
                return None
            before = sum(self._redactor.found.values())
            redacted = self._redactor.tool_result(result)
            self.report.redacted = Counter(self._redactor.found)
            return redacted if sum(self._redactor.found.values()) > before else None
        key = LIST_RESULT_KEYS.get(call.method)
        if key is None:
            return None
        items = result.get(key)
        if not isinstance(items, list):
            return None
        kept = items
        if call.method == "tools/list":
            kept = self._check_pins(kept)
        if self._listing is not None:
            kept, _ = self._listing.filter_items(call.method, kept)
        hidden = len(items) - len(kept)
        if hidden == 0 and self._listing is None:
            return None
        self.report.hidden[call.method] += hidden
        rewritten = {**result, key: kept}
        if self._listing is not None and ("cacheScope" in result or "ttlMs" in result):
            # Filtered per caller: a cache must not hand this list to anyone else.
            rewritten["cacheScope"] = "private"
        return rewritten

    def _check_pins(self, tools: list[Any]) -> list[Any]:
        policy = self.upstream.responses.pins
        if not policy.active:
            return tools
        kept = []
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            check = check_tool(policy, tool)
            if check.status is not PinStatus.UNPINNED:
                self.report.observed[check.tool] = check.sha256
            if check.status is PinStatus.PINNED:
                kept.append(tool)
                continue
            self.report.pins.append(check)
            if policy.mode is PinMode.WARN:
                kept.append(tool)
        return kept


def unchecked_answer(request_id: Any, reason: str) -> dict[str, Any]:
    """The JSON-RPC error that stands in for an answer the gateway could not check."""
    messages = {
        "response_too_large": "the answer is larger than the gateway may read to check it",
        "response_unreadable": "the answer could not be read to check it",
        "response_processing_failed": "the gateway failed while checking the answer",
    }
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": UNCHECKED_ANSWER_CODE,
            "message": messages.get(reason, "the answer could not be checked"),
            "data": {"reason": reason},
        },
    }
