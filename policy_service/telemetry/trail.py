"""After each decision: the audit event, the metrics and the Check span's attributes.

``Trail`` is what the gRPC servicer holds. It opens the Check span (continuing Envoy's
trace); once the pipeline has decided, ``audit`` writes exactly one audit event and says
whether the sink took it, and ``describe`` counts the decision sent and describes it on the
span. What an unwritten event means for the call (the failure mode) is the servicer's
choice, next to its other fail-closed ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from policy_service.decisions.model import Decision
from policy_service.otel.spans import TRACER_NAME, link_to
from policy_service.request.model import (
    HttpRequest,
    McpRequest,
)
from policy_service.telemetry.audit import AuditFailureMode, Auditor
from policy_service.telemetry.audit_event import audit_event
from policy_service.telemetry.facts import CheckFacts
from policy_service.telemetry.metrics import CheckMetrics
from policy_service.telemetry.record import CheckRecord
from policy_service.telemetry.recording import Recorder
from policy_service.telemetry.tracing import (
    ANSWER_SPAN_NAME,
    CHECK_ATTRIBUTES,
    CHECK_SPAN_NAME,
    set_check_attributes,
)

log = logging.getLogger("policy_service.telemetry")

_UNKNOWN_TAG_LOG_INTERVAL = 60.0  # seconds between warnings about one unknown route tag


class Trail:
    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        auditor: Auditor | None = None,
        metrics: CheckMetrics | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.tracer: trace.Tracer = (
            tracer_provider.get_tracer(TRACER_NAME)
            if tracer_provider is not None
            else trace.NoOpTracer()
        )
        # A parent-based sampler (the default) drops every child of an unsampled parent.
        self._follows_parent = tracer_provider is not None and isinstance(
            tracer_provider.sampler, ParentBased
        )
        self.auditor = auditor or Auditor(None, AuditFailureMode.OPEN)
        self.metrics = metrics
        self.recorder = recorder  # serve --record: replayable lines, None when off
        self._unknown_tags_logged: dict[str, float] = {}

    @contextmanager
    def check_span(self, parent: Context) -> Iterator[trace.Span]:
        if self.tracer_provider is None:
            yield trace.INVALID_SPAN  # tracing off: no span, and no phase events on it
            return
        if self._follows_parent:
            inherited = trace.get_current_span(parent).get_span_context()
            if inherited.is_valid and not inherited.trace_flags.sampled:
                # Envoy did not sample this request, and the sampler follows the parent:
                # the SDK would make a non-recording span. Most checks in production are
                # these (1% sampling), so they skip the SDK, and the context, entirely.
                yield trace.INVALID_SPAN
                return
        with self.tracer.start_as_current_span(
            CHECK_SPAN_NAME,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=CHECK_ATTRIBUTES,
            record_exception=False,  # a traceback could quote request content
        ) as span:
            yield span

    def answer_span(self, parent: Context) -> trace.Span:
        """The span of one answer's processing (ended by the caller, when the answer
        ends): a child of Envoy's ext_proc span, never made current (an answer's stream
        spans many awaits). The invalid span when tracing is off or Envoy did not sample."""
        if self.tracer_provider is None:
            return trace.INVALID_SPAN
        if self._follows_parent:
            inherited = trace.get_current_span(parent).get_span_context()
            if inherited.is_valid and not inherited.trace_flags.sampled:
                return trace.INVALID_SPAN
        return self.tracer.start_span(
            ANSWER_SPAN_NAME, context=parent, kind=SpanKind.SERVER, record_exception=False
        )

    def audit(
        self,
        span: trace.Span,
        parent: Context,
        request: HttpRequest,
        decision: Decision,
        record: CheckRecord,
        facts: CheckFacts,
        seconds: float,
    ) -> bool:
        """Write the decision's audit event; False when the sink could not take it (the
        servicer decides what that means for the call: the failure mode is its choice)."""
        if not self.auditor.enabled:
            return True
        trace_id, span_id = _trace_ids(span, parent)
        event = audit_event(
            request,
            decision,
            record,
            facts,
            latency_seconds=seconds,
            trace_id=trace_id,
            span_id=span_id,
        )
        return self.auditor.write(event)

    def record(self, request: HttpRequest, decision: Decision, record: CheckRecord) -> None:
        """A replayable line for the check, when recording is on (built only then)."""
        if self.recorder is not None:
            self.recorder.record(request, decision, record)

    def describe(
        self,
        span: trace.Span,
        request: HttpRequest,
        decision: Decision,
        record: CheckRecord,
        facts: CheckFacts,
        seconds: float,
    ) -> None:
        """Count the decision sent and describe it on the Check span."""
        if self.metrics is not None:
            self.metrics.observe(decision, record, facts, seconds)
        if record.route_tag is not None:
            self._log_unknown_route_tag(record)
        if span.is_recording():
            set_check_attributes(span, request, decision, record, facts)
            if isinstance(record.parsed, McpRequest):
                link = link_to(record.parsed.trace_parent)
                if link is not None:
                    span.add_link(link.context, {"policy_service.link": "mcp_meta_traceparent"})

    def _log_unknown_route_tag(self, record: CheckRecord) -> None:
        # Every check on such a route is refused, so one line a minute per tag: enough to
        # be found, not enough to flood. Tags come from Envoy's config, so they are few.
        tag = record.route_tag or ""
        now = time.monotonic()
        if now - self._unknown_tags_logged.get(tag, -_UNKNOWN_TAG_LOG_INTERVAL) < (
            _UNKNOWN_TAG_LOG_INTERVAL
        ):
            return
        self._unknown_tags_logged[tag] = now
        revision = record.bundle.revision if record.bundle is not None else "none"
        log.warning(
            "Envoy route tag upstream=%r names no upstream of bundle revision %s: the Envoy "
            "config and the bundle disagree, and every check on that route is refused with "
            "503 unknown_upstream (decision %s)",
            tag,
            revision,
            record.decision_id,
        )

    def close(self) -> None:
        """Flush spans still queued for export, and close the audit sink."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        self.auditor.close()
        if self.recorder is not None:
            self.recorder.close()


def _trace_ids(span: trace.Span, parent: Context) -> tuple[str, str]:
    """Our span's ids; else, unsampled or untraced here, the trace Envoy is in."""
    context = span.get_span_context()
    if context.is_valid and span.is_recording():
        return format_trace_id(context.trace_id), format_span_id(context.span_id)
    inherited = trace.get_current_span(parent).get_span_context()
    if inherited.is_valid:
        return format_trace_id(inherited.trace_id), ""
    return "", ""
