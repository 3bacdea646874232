"""Envoy's own spans: the OpenTelemetry tracer and the runtime keys that flush its spans."""

from __future__ import annotations

from policy_service.gateway.clusters import OTEL_COLLECTOR_CLUSTER
from policy_service.gateway.layout import TYPE_URL, Config, EnvoyLayout

OPENTELEMETRY_TRACER = "envoy.tracers.opentelemetry"


def tracing(layout: EnvoyLayout) -> Config:
    """Envoy's OpenTelemetry tracer, reporting to the ``otel_collector`` cluster.

    Nothing else is needed (Envoy 1.40, pinned by tests/integration/test_envoy_tracing.py):
    each request gets a SERVER span named "ingress", a child of the client's span when a
    valid ``traceparent`` came with it. ext_authz's gRPC client opens a CLIENT child span,
    "async envoy.service.auth.v3.Authorization.Check egress", and sends *that* span as
    ``traceparent`` in the Check call's gRPC metadata, so the policy service's spans nest
    under it. The CheckRequest's own headers carry only what the client sent (Envoy injects
    the ingress span later, into the request the router sends the backend).
    ``spawn_upstream_span`` stays off: it adds a span around the router's call to the
    backend, and the ext_authz call has its span without it.
    """
    return {
        "provider": {
            "name": OPENTELEMETRY_TRACER,
            "typed_config": {
                "@type": TYPE_URL + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTEL_COLLECTOR_CLUSTER}},
                "service_name": "envoy",
            },
        },
        # Envoy samples every request itself. A client's traceparent joins the trace but can
        # only turn sampling off ("-00" is never recorded), not on: when the draw here says
        # no, a client's "-01" is forwarded as "-00".
        "random_sampling": {"value": layout.trace_sampling_percent},
        # Envoy's default lets any client force a trace with x-client-trace-id, past
        # random_sampling: at the edge, a way to load the collector at will.
        "client_sampling": {"value": 0},
    }


def tracing_runtime(flush_interval_ms: int) -> Config:
    # Envoy's OpenTelemetry tracer buffers finished spans per worker thread and exports them
    # every tracing.opentelemetry.flush_interval_ms (default 5000) or as soon as
    # tracing.opentelemetry.min_flush_spans (default 5) are waiting; the tracer reads both
    # from the runtime, there is no config field for them. One span at a time makes a trace
    # visible while someone is still looking at the request, for one small Export call per
    # span. A misspelt runtime key is silently ignored: the tracing tests read them back
    # from Envoy and run with an hour-long interval, so spans arrive only by count.
    return {
        "layers": [
            {
                "name": "tracing",
                "static_layer": {
                    "tracing.opentelemetry.flush_interval_ms": flush_interval_ms,
                    "tracing.opentelemetry.min_flush_spans": 1,
                },
            }
        ]
    }
