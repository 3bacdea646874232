"""Prometheus metrics of the response side: answers processed, items hidden, secrets
redacted, tool definitions off their pins, sessions bound and refused.

Label values come from the bundle (upstream names, pinned tool names, pattern kinds) or
from fixed sets; a tool name only the server knows is counted as "other".
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter

OTHER = "other"


class AnswerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._answers = Counter(
            "policy_service_answers",
            "Upstream answers the response side processed, by upstream and outcome "
            "(unchanged, rewritten, or the reason it became an error).",
            ("upstream", "outcome"),
            registry=registry,
        )
        self._hidden = Counter(
            "policy_service_list_items_hidden",
            "List items a caller was not shown, by upstream and list method.",
            ("upstream", "method"),
            registry=registry,
        )
        self._redacted = Counter(
            "policy_service_redactions",
            "Matches replaced in tool results, by upstream and kind.",
            ("upstream", "kind"),
            registry=registry,
        )
        self._pins = Counter(
            "policy_service_tool_pin_mismatches",
            "Tools seen in a tools/list whose definition differs from its pin (changed) or "
            "that have none (unpinned), by upstream, tool and the upstream's pin mode.",
            ("upstream", "tool", "status", "mode"),
            registry=registry,
        )
        self._sessions = Counter(
            "policy_service_sessions",
            "Session binding events by upstream: bound, conflict (id already another's), ended.",
            ("upstream", "event"),
            registry=registry,
        )

    def answer(
        self,
        upstream: str,
        outcome: str,
        hidden: Mapping[str, int],
        redacted: Mapping[str, int],
    ) -> None:
        self._answers.labels(upstream, outcome).inc()
        for method, count in hidden.items():
            if count:
                self._hidden.labels(upstream, method).inc(count)
        for kind, count in redacted.items():
            self._redacted.labels(upstream, kind).inc(count)

    def pin_mismatch(self, upstream: str, tool: str, status: str, mode: str) -> None:
        self._pins.labels(upstream, tool, status, mode).inc()

    def session(self, upstream: str, event: str) -> None:
        self._sessions.labels(upstream, event).inc()
