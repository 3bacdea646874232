"""Spans without domain types: the Check span's parent, links, phase spans, error status.

An unsampled or untraced check pays for no span objects: ``phase_span`` yields the invalid
span when nothing above it records.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

TRACER_NAME = "policy_service"
_W3C = TraceContextTextMapPropagator()


def parent_context(metadata: Mapping[str, str], headers: Mapping[str, str]) -> Context:
    """The Check span's parent: Envoy's ext_authz span from the gRPC metadata, else the
    request's own trace headers (propagators as ``OTEL_PROPAGATORS`` configures)."""
    context = propagate.extract(metadata)
    if trace.get_current_span(context).get_span_context().is_valid:
        return context
    return propagate.extract(headers)


def link_to(traceparent: str | None) -> Link | None:
    """A link to the agent's span named in an MCP body's ``_meta.traceparent``, if valid."""
    if traceparent is None:
        return None
    context = _W3C.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    return Link(span_context) if span_context.is_valid else None


@contextmanager
def phase_span(
    tracer: trace.Tracer,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """A child of the current span, or nothing at all when the check is not being traced
    (an unsampled or untraced check pays for no spans)."""
    if not trace.get_current_span().is_recording():
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes) as span:
        yield span


def mark_internal_error(span: trace.Span) -> None:
    span.set_status(Status(StatusCode.ERROR, "internal_error"))
