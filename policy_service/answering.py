"""The response side's pipeline: one upstream answer, from its headers to its last byte.

Envoy opens an ext_proc stream only for answers the check left a plan for (``responses.plan``),
sends the answer's headers, then its body chunk by chunk (STREAMED). Each chunk's reply
replaces it:

- a JSON answer is held (each chunk replaced by nothing) up to the upstream's
  ``max_body_bytes``, and the whole rewritten body goes out with the last chunk;
- an SSE answer goes out event by event, each as soon as its blank line arrives, so
  streaming stays streaming;
- anything that can't be checked (too large, not JSON, a fault here) goes out as a
  JSON-RPC error naming the reason, never as the unchecked answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from opentelemetry.trace import INVALID_SPAN, Span
from opentelemetry.util.types import AttributeValue

from policy_service.policy.model import UpstreamPolicy
from policy_service.responses.answers import AnswerReport, AnswerRewriter, unchecked_answer
from policy_service.responses.guard import AnswerGuard
from policy_service.responses.plan import ResponsePlan, SessionWork
from policy_service.responses.sessions import BindOutcome
from policy_service.responses.shared import SharedStateUnavailableError
from policy_service.responses.sse import SseEvent, SseSplitter
from policy_service.state import ServingBundles
from policy_service.telemetry.answer_metrics import OTHER, AnswerMetrics
from policy_service.telemetry.audit import Auditor
from policy_service.telemetry.audit_event import rfc3339
from policy_service.telemetry.tracing import describe_answer

log = logging.getLogger("policy_service.answers")

AUDIT_SCHEMA = "policy_service.audit.v1"
_JSON_TYPES = ("application/json",)
_SSE_TYPES = ("text/event-stream",)


class BodyMode(StrEnum):
    NONE = "none"  # the body passes untouched (Envoy stops sending it)
    JSON = "json"
    SSE = "sse"


@dataclass(frozen=True, slots=True)
class HeadersOutcome:
    body: BodyMode
    remove_headers: tuple[str, ...] = ()
    set_headers: tuple[tuple[str, str], ...] = ()


class ResponsePipeline:
    """Opens one ``AnswerProcessing`` per planned answer, over the bundle being served."""

    def __init__(
        self,
        bundles: ServingBundles,
        guard: AnswerGuard,
        auditor: Auditor | None = None,
        metrics: AnswerMetrics | None = None,
    ) -> None:
        self.bundles = bundles
        self.guard = guard
        self.auditor = auditor
        self.metrics = metrics

    def open(self, plan_text: str, span: Span = INVALID_SPAN) -> AnswerProcessing:
        """The processing of one answer; ValueError when the plan can't be read or names an
        upstream the bundle doesn't have (then the answer fails closed). ``span``, when
        recording, is described and ended by ``finish``."""
        plan = ResponsePlan.from_metadata(plan_text)
        upstream = self.bundles.current.bundle.by_name.get(plan.upstream)
        if upstream is None:
            raise ValueError("the response plan names an upstream the bundle does not have")
        return AnswerProcessing(self, upstream, plan, span)


class AnswerProcessing:
    def __init__(
        self,
        pipeline: ResponsePipeline,
        upstream: UpstreamPolicy,
        plan: ResponsePlan,
        span: Span = INVALID_SPAN,
    ) -> None:
        self.pipeline = pipeline
        self.upstream = upstream
        self.plan = plan
        self.span = span
        self.rewriter = AnswerRewriter(upstream, plan)
        self.report: AnswerReport = self.rewriter.report
        self.status = 0
        self.mode = BodyMode.NONE
        self.session_event = ""
        self._limit = upstream.responses.max_body_bytes
        self._held = bytearray()
        self._sse = SseSplitter()
        self._started = time.perf_counter()

    # --- headers ---------------------------------------------------------------------

    async def on_headers(self, status: int, headers: Mapping[str, str]) -> HeadersOutcome:
        self.status = status
        ok = 200 <= status < 300
        await self._sessions(ok, headers)
        if not ok or not any(call.method != "initialize" for call in self.plan.calls):
            return HeadersOutcome(BodyMode.NONE)
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type in _SSE_TYPES:
            self.mode = BodyMode.SSE
        elif content_type in _JSON_TYPES:
            self.mode = BodyMode.JSON
        else:
            # A 2xx answer to a call whose result must be checked, in a form that can't
            # be: it is replaced, not passed, and labelled as what replaces it (a client
            # drops a body whose content type it doesn't speak, error or not).
            self.mode = BodyMode.JSON
            self.report.failure = "response_unreadable"
            return HeadersOutcome(
                self.mode, ("content-length",), (("content-type", "application/json"),)
            )
        # The body's length changes: Envoy sends it chunked (HTTP/1.1) or framed (HTTP/2).
        return HeadersOutcome(self.mode, ("content-length",))

    async def _sessions(self, ok: bool, headers: Mapping[str, str]) -> None:
        plan, upstream = self.plan, self.upstream
        sessions = self.pipeline.guard.sessions
        try:
            if plan.session is SessionWork.BIND and ok:
                session_id = headers.get("mcp-session-id")
                # No id (a stateless server): nothing to bind, and the client sends none.
                if session_id and plan.principal is not None:
                    ttl = upstream.responses.sessions.ttl_seconds
                    bound = await sessions.bind(upstream.name, session_id, plan.principal, ttl)
                    self.session_event = bound.value
                    if bound is BindOutcome.CONFLICT:
                        # The owner keeps it; this client's uses of it are refused as foreign.
                        log.warning(
                            "upstream %s opened a session whose id is already bound to "
                            "another principal; it stays theirs (decision %s)",
                            upstream.name,
                            plan.decision_id,
                        )
            elif plan.session is SessionWork.END and ok and plan.session_id is not None:
                await sessions.end(upstream.name, plan.session_id)
                self.session_event = "ended"
        except SharedStateUnavailableError:
            # Unbound, the session is unknown to every check, which refuses it: the client
            # starts a new one. Nothing is let through that the binding would have stopped.
            log.warning(
                "session binding for upstream %s could not be stored (decision %s); its "
                "requests will be refused as unknown",
                upstream.name,
                plan.decision_id,
            )
        if self.session_event and self.pipeline.metrics is not None:
            self.pipeline.metrics.session(upstream.name, self.session_event)

    # --- body ------------------------------------------------------------------------

    def on_body(self, chunk: bytes, end: bool) -> bytes:
        """What goes to the client in place of ``chunk``."""
        if self.mode is BodyMode.SSE:
            return self._sse_chunk(chunk, end)
        return self._json_chunk(chunk, end)

    def _json_chunk(self, chunk: bytes, end: bool) -> bytes:
        if self.report.failure is None:
            if len(self._held) + len(chunk) > self._limit:
                self.report.failure = "response_too_large"
                self._held.clear()
            else:
                self._held += chunk
        if not end:
            return b""
        if self.report.failure is not None:
            return self._error_body()
        try:
            document = orjson.loads(self._held)
        except orjson.JSONDecodeError:
            self.report.failure = "response_unreadable"
            return self._error_body()
        rewritten = self._rewrite(document)
        if self.report.failure is not None:
            return self._error_body()
        return bytes(self._held) if rewritten is None else orjson.dumps(rewritten)

    def _sse_chunk(self, chunk: bytes, end: bool) -> bytes:
        out = bytearray()
        for event in self._sse.feed(chunk):
            # The cap holds however the event came: whole in one chunk or over many.
            if len(event.raw) > self._limit:
                self.report.failure = "response_too_large"
                out += self._error_event()
            else:
                out += self._event(event)
        if self._sse.pending > self._limit:
            # One event larger than may be read: its place gets an error event, and the
            # rest of it is dropped as it arrives; the events after it are still read.
            self._sse.drop_event()
            self.report.failure = "response_too_large"
            out += self._error_event()
        if end:
            tail = self._sse.finish()
            if tail is not None:
                out += self._event(tail)
        return bytes(out)

    def _event(self, event: SseEvent) -> bytes:
        if event.data is None:
            return event.raw
        try:
            document = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return event.raw  # not JSON-RPC: nothing the plan covers
        rewritten = self._rewrite(document)
        if rewritten is None:
            return event.raw
        return event.with_data(orjson.dumps(rewritten))

    def _rewrite(self, document: Any) -> Any | None:
        try:
            return self.rewriter.document(document)
        except Exception:
            # Fail closed, and name no content: the traceback names code only.
            log.exception(
                "processing an answer of upstream %s failed (decision %s)",
                self.upstream.name,
                self.plan.decision_id,
            )
            self.report.failure = "response_processing_failed"
            return None

    def _error_document(self) -> dict[str, Any]:
        calls = self.plan.calls
        request_id = calls[0].request_id if calls else None
        return unchecked_answer(request_id, self.report.failure or "response_unreadable")

    def _error_body(self) -> bytes:
        return orjson.dumps(self._error_document())

    def _error_event(self) -> bytes:
        return b"event: message\ndata: " + self._error_body() + b"\n\n"

    # --- the end ---------------------------------------------------------------------

    async def finish(self) -> None:
        """Remember the definitions seen, then audit, count and log this answer."""
        report, upstream = self.report, self.upstream
        if report.observed:
            try:
                await self.pipeline.guard.observed(upstream.name, report.observed)
            except SharedStateUnavailableError:
                log.warning(
                    "tool definitions seen on upstream %s could not be stored; other "
                    "replicas learn of them from their own lists",
                    upstream.name,
                )
        mode = upstream.responses.pins.mode.value
        for check in report.pins:
            log.warning(
                "upstream %s: tool %r is %s (pin mode %s, decision %s)",
                upstream.name,
                check.tool,
                "not pinned" if check.status.value == "unpinned" else "changed from its pin",
                mode,
                self.plan.decision_id,
            )
        outcome = report.failure or ("rewritten" if report.rewritten else "unchanged")
        metrics = self.pipeline.metrics
        if metrics is not None:
            metrics.answer(upstream.name, outcome, report.hidden, report.redacted)
            pinned = upstream.responses.pins.pins
            for check in report.pins:
                tool = check.tool if check.tool in pinned else OTHER
                metrics.pin_mismatch(upstream.name, tool, check.status.value, mode)
        auditor = self.pipeline.auditor
        if auditor is not None and auditor.enabled:
            auditor.write(self._audit_event(outcome, mode))
        if self.span.is_recording():
            describe_answer(self.span, self._span_attributes(outcome))
            self.span.end()

    def _span_attributes(self, outcome: str) -> dict[str, AttributeValue]:
        report = self.report
        attributes: dict[str, AttributeValue] = {
            "policy_service.decision_id": self.plan.decision_id,
            "policy_service.upstream": self.upstream.name,
            "policy_service.answer.outcome": outcome,
            "http.response.status_code": self.status,
            "policy_service.answer.items_hidden": sum(report.hidden.values()),
            "policy_service.answer.redactions": sum(report.redacted.values()),
            "policy_service.answer.pin_mismatches": len(report.pins),
        }
        if self.plan.calls:
            attributes["mcp.method.name"] = self.plan.calls[0].method
        if self.session_event:
            attributes["policy_service.answer.session"] = self.session_event
        return attributes

    def _audit_event(self, outcome: str, mode: str) -> dict[str, Any]:
        report = self.report
        answer: dict[str, Any] = {"status": self.status}
        if report.hidden:
            answer["hidden"] = dict(report.hidden)
        if report.redacted:
            answer["redacted"] = dict(report.redacted)
        if report.pins:
            answer["pins"] = [
                {"tool": check.tool, "status": check.status.value, "mode": mode}
                for check in report.pins
            ]
        if self.session_event:
            answer["session"] = self.session_event
        return {
            "schema": AUDIT_SCHEMA,
            "time": rfc3339(time.time()),
            "decision_id": self.plan.decision_id,
            "bundle_revision": self.pipeline.bundles.current.bundle.revision,
            "decision": "answer",
            "reason": outcome,
            "target": {"upstream": self.upstream.name, "protocol": "mcp"},
            "latency_ms": round((time.perf_counter() - self._started) * 1000, 3),
            "answer": answer,
        }
