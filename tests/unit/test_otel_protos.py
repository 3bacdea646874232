"""The OTel proto modules must be opentelemetry-proto's, not xds-protos' older copy."""

from __future__ import annotations

from policy_service.dev.otel_protos import main, otel_protos_intact


def test_the_otlp_exporter_and_receiver_see_current_otel_protos() -> None:
    # Fails (loudly, never skips) on an install where xds-protos overwrote them; the fix
    # is `python -m policy_service.dev.otel_protos`, which .ci/run runs after installing.
    assert otel_protos_intact()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.trace.v1 import trace_pb2

    assert OTLPSpanExporter is not None
    assert "scope_spans" in trace_pb2.ResourceSpans.DESCRIPTOR.fields_by_name


def test_check_mode_reports_intact_modules() -> None:
    assert main(["--check"]) == 0
