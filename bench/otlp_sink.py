"""A bare OTLP/gRPC trace sink for the benchmark: accepts spans, counts them, keeps nothing.

Runs as its own process so the service rows pay for exporting spans (serializing them and
sending them over gRPC), as they would to a real collector, while the sink's own CPU stays
out of the service's numbers. On SIGTERM it prints the number of spans it received.

    python bench/otlp_sink.py PORT
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self.by_service: dict[str, int] = {}
        self._lock = threading.Lock()

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resources in request.resource_spans:
                count = sum(len(scope.spans) for scope in resources.scope_spans)
                name = _service_name(resources)
                self.spans += count
                self.by_service[name] = self.by_service.get(name, 0) + count
        return trace_service_pb2.ExportTraceServiceResponse()


def _service_name(resources: Any) -> str:
    for attribute in resources.resource.attributes:
        if attribute.key == "service.name":
            return str(attribute.value.string_value) or "unknown"
    return "unknown"


def main() -> None:
    port = int(sys.argv[1])
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # opentelemetry-proto's generated gRPC module has no annotations.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.stop(None)
    senders = " ".join(f"{name}={count}" for name, count in sorted(sink.by_service.items()))
    print(f"spans {sink.spans} {senders}".rstrip(), flush=True)


if __name__ == "__main__":
    main()
