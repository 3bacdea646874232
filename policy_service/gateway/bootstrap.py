"""The gateway's Envoy bootstrap, rendered from a checked ``EnvoyLayout``.

``render_envoy_config`` is a pure function: ``EnvoyLayout`` in, a plain dict (the Envoy v3
bootstrap as YAML/JSON would spell it) out; nothing here starts Envoy or touches files.
The choices that matter for security and streaming are explained where they are made:

* ext_authz fails closed: ``failure_mode_allow: false`` and ``status_on_error: 503``, so an
  outage of the policy service is never an allow and never looks like a policy denial
  (``filters``).
* ext_authz sees the body (raw bytes, truncated at ``max_request_bytes``, never rejected by
  Envoy) so the service can read the JSON-RPC method and deny truncated bodies itself
  (``filters``).
* Streams are never buffered or cut: no route timeout, no route idle timeout, no buffer filter
  (``routes``, ``listeners``).
* Paths are normalized before routing and before ext_authz sees them: a path that routes one way
  and authorizes another is an authorization bypass (``listeners``).
* With an ``OtlpCollector``, Envoy reports its own spans (one per request, one per ext_authz
  call) and passes the trace on to the policy service in the Check call's ``traceparent``
  (``tracing``).
"""

from __future__ import annotations

from policy_service.gateway.clusters import (
    authz_cluster,
    backend_cluster,
    otel_collector_cluster,
    socket_address,
)
from policy_service.gateway.filters import (
    duration,
    ext_authz_filter,
    ext_proc_filter,
    router_filter,
)
from policy_service.gateway.layout import TYPE_URL, Config, EnvoyLayout, check_layout
from policy_service.gateway.listeners import (
    HcmParts,
    downstream_tls,
    http_connection_manager,
    listener,
    stdout_access_log,
)
from policy_service.gateway.routes import route_config
from policy_service.gateway.tracing import tracing, tracing_runtime


def render_envoy_config(layout: EnvoyLayout) -> Config:
    """The Envoy bootstrap for ``layout``. Raises ``ConfigError`` for an inconsistent layout."""
    check_layout(layout)
    # One route config, filter list and access log, shared by both listeners (same objects,
    # so the YAML dump writes them once).
    collector = layout.otlp_collector
    shared = HcmParts(
        route_config=route_config(layout.upstreams),
        http_filters=[
            ext_authz_filter(layout),
            *([ext_proc_filter(layout)] if layout.response_side else []),
            router_filter(),
        ],
        access_log=[stdout_access_log(trace_id=collector is not None)] if layout.access_log else [],
        tracing=tracing(layout) if collector is not None else None,
        request_headers_timeout=duration(layout.request_headers_timeout_seconds),
    )
    listeners: list[Config] = []
    if layout.plain_port is not None:
        hcm = http_connection_manager("ingress_http", shared)
        listeners.append(listener("plain_http", layout.listen_address, layout.plain_port, hcm))
    if layout.tls_port is not None:
        hcm = http_connection_manager("ingress_https", shared)
        tls_listener = listener("tls_https", layout.listen_address, layout.tls_port, hcm)
        tls_listener["filter_chains"][0]["transport_socket"] = downstream_tls(layout)
        listeners.append(tls_listener)
    clusters = [authz_cluster(layout)]
    clusters += [backend_cluster(u) for u in layout.upstreams if not u.is_direct_response]
    if collector is None:
        return bootstrap(layout.admin_port, listeners, clusters, admin=layout.admin_address)
    clusters.append(otel_collector_cluster(collector))
    runtime = tracing_runtime(layout.trace_flush_interval_ms)
    return bootstrap(
        layout.admin_port, listeners, clusters, runtime=runtime, admin=layout.admin_address
    )


def bootstrap(
    admin_port: int,
    listeners: list[Config],
    clusters: list[Config],
    *,
    runtime: Config | None = None,
    admin: str = "127.0.0.1",
) -> Config:
    return {
        "admin": {"address": {"socket_address": socket_address(admin, admin_port)}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        **({"layered_runtime": runtime} if runtime is not None else {}),
        # Envoy warns (and an edge proxy should not run) without a global connection cap.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": TYPE_URL
                        + "envoy.extensions.resource_monitors.downstream_connections.v3"
                        + ".DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 50000,
                    },
                }
            ]
        },
    }
