"""A real OTLP/gRPC trace receiver for tests: what Envoy (or the service) exported, as records.

``OtlpReceiver`` is the collector end of ``opentelemetry.proto.collector.trace.v1``, served
by a plain threaded ``grpc.server`` on loopback so it works from sync and async tests alike.
Spans arrive when the exporter flushes, not when the request ends: wait with ``wait_for``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from types import TracebackType

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

SpanPredicate = Callable[[list["ReceivedSpan"]], bool]


@dataclass(frozen=True)
class ReceivedSpan:
    service_name: str  # the resource's service.name
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # 16 hex digits, or "" for a root span
    name: str
    kind: str  # "SERVER", "CLIENT", "INTERNAL", ...
    attributes: dict[str, object]
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id)
    status_code: str  # "UNSET", "OK" or "ERROR"
    events: dict[str, dict[str, object]]  # name -> attributes (a check's phases)


def any_value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return None  # kvlist and bytes: nothing here needs them


def attributes(pairs: Iterable[KeyValue]) -> dict[str, object]:
    return {pair.key: any_value(pair.value) for pair in pairs}


def _record(service_name: str, span: trace_pb2.Span) -> ReceivedSpan:
    kind = trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_")
    status = trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_")
    return ReceivedSpan(
        service_name=service_name,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name,
        kind=kind,
        attributes=attributes(span.attributes),
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
        status_code=status,
        events={event.name: attributes(event.attributes) for event in span.events},
    )


def describe(spans: Iterable[ReceivedSpan]) -> str:
    lines = [f"  {s.service_name}: {s.kind} {s.name!r} trace={s.trace_id}" for s in spans]
    return "\n".join(lines) or "  (no spans)"


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every exported span; ``with OtlpReceiver() as receiver: ...``."""

    def __init__(self, port: int = 0) -> None:
        self.port = port  # 0: any free port; a fixed one where a document names it
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None)

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            service_name = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                received += [_record(service_name, span) for span in scope_spans.spans]
        with self._changed:
            self._spans += received
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans() if span.trace_id == trace_id]

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()

    def wait_for(self, predicate: SpanPredicate, timeout: float = 15) -> list[ReceivedSpan]:
        """The spans so far once ``predicate`` holds for them; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._spans)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"the spans awaited did not arrive within {timeout:g}s; received:\n"
                        + describe(self._spans)
                    )
                self._changed.wait(remaining)
            return list(self._spans)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
