"""A tracer provider from the standard ``OTEL_*`` variables, or none when tracing is off.

Plumbing only: nothing here knows what a check is. The OTLP exporter is loaded only when
asked for, after the OTel proto modules have been put back (``protos``).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from policy_service.errors import ConfigError
from policy_service.otel.protos import ensure_otel_protos

DEFAULT_SERVICE_NAME = "policy-service"


def setup_tracing(environ: Mapping[str, str]) -> TracerProvider | None:
    """A tracer provider as the ``OTEL_*`` variables describe, or None when tracing is off.

    ``OTEL_TRACES_EXPORTER`` (otlp, console, none) and ``OTEL_EXPORTER_OTLP_ENDPOINT``
    turn it on; the OTLP exporter, the batch processor and the sampler read the rest of
    the standard variables themselves.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names:
        if not otlp_endpoint(environ):
            return None
        names = "otlp"
    chosen = [_exporter(name.strip(), environ) for name in names.split(",") if name.strip()]
    exporters = [exporter for exporter in chosen if exporter is not None]
    if not exporters:
        return None
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def otlp_endpoint(environ: Mapping[str, str]) -> str | None:
    """Where OTLP trace export goes: the traces-specific variable first, as the SDK reads it."""
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: '{name}' is not one of otlp, console, none")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if protocol.strip() != "grpc":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: only grpc is supported, not '{protocol}'")
    # xds-protos installs an old copy of the OTel protos over opentelemetry-proto's: put
    # them back (and say so) before the exporter imports them.
    ensure_otel_protos()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
