"""Envoy clusters: the policy service, each backend, the trace collector."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from policy_service.gateway.layout import (
    TYPE_URL,
    Config,
    EnvoyLayout,
    OtlpCollector,
    UpstreamRoute,
)

AUTHZ_CLUSTER = "authz"
OTEL_COLLECTOR_CLUSTER = "otel_collector"

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def authz_cluster(layout: EnvoyLayout) -> Config:
    http2: Config = {
        # Notice a dead policy-service connection quickly instead of queueing checks on it.
        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
    }
    if layout.authz_max_concurrent_streams is not None:
        http2["max_concurrent_streams"] = layout.authz_max_concurrent_streams
    endpoints = [(e.host, e.port) for e in layout.authz]
    cluster = _cluster(AUTHZ_CLUSTER, endpoints, http2=http2, connect_timeout="0.25s")
    # A process that refuses connections is ejected so its share of checks goes to the
    # others; with every endpoint ejected Envoy still tries them all (panic mode) and the
    # failures stay 503s.
    cluster["outlier_detection"] = {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 2,
        "interval": "1s",
        "base_ejection_time": "5s",
        "max_ejection_percent": 100,
    }
    if layout.authz_tls:
        cluster["transport_socket"] = _upstream_tls(layout)
    return cluster


def _upstream_tls(layout: EnvoyLayout) -> Config:
    common: Config = {
        "alpn_protocols": ["h2"],
        "validation_context": {"trusted_ca": {"filename": layout.authz_ca_file}},
    }
    if layout.authz_cert_file and layout.authz_key_file:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": layout.authz_cert_file},
                "private_key": {"filename": layout.authz_key_file},
            }
        ]
    context: Config = {
        "@type": TYPE_URL + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    }
    if layout.authz_sni:
        context["sni"] = layout.authz_sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def otel_collector_cluster(collector: OtlpCollector) -> Config:
    # OTLP/gRPC, so HTTP/2 like the authz cluster. Spans are best effort: a collector that is
    # down loses spans and never delays or fails a request.
    endpoints = [(collector.host, collector.port)]
    cluster = _cluster(OTEL_COLLECTOR_CLUSTER, endpoints, http2={}, connect_timeout="1s")
    if collector.tls:
        cluster["transport_socket"] = _collector_tls(collector)
    return cluster


def _collector_tls(collector: OtlpCollector) -> Config:
    # https:// names no CA of its own, so the chain is checked against the system's roots, as
    # the OpenTelemetry SDKs do. Unlike them, Envoy (1.40) does not check the collector's
    # name: it refuses a SAN matcher without an explicit trusted_ca ("SAN-based verification
    # of peer certificates without trusted CA is insecure"). A collector behind a private CA,
    # or one whose name must be pinned, needs its own trusted_ca and SAN matcher.
    context: Config = {
        "@type": TYPE_URL + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "validation_context": {"system_root_certs": {}},
        },
    }
    if not _is_ip(collector.host):
        context["sni"] = collector.host  # an IP address is never a valid SNI name
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def backend_cluster(upstream: UpstreamRoute) -> Config:
    return _cluster(
        upstream.cluster_name,
        [(upstream.backend_host, upstream.backend_port)],
        http2={} if upstream.backend_http2 else None,
        connect_timeout="2s",
    )


def _cluster(
    name: str, endpoints: Sequence[tuple[str, int]], *, http2: Config | None, connect_timeout: str
) -> Config:
    static = all(_is_ip(host) for host, _ in endpoints)
    cluster: Config = {
        "name": name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
    }
    if not static:
        # "localhost" resolving to ::1 first would miss a server bound to 127.0.0.1.
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if http2 is not None:
        cluster["typed_extension_protocol_options"] = {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": TYPE_URL + _HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": http2},
            }
        }
    cluster["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": socket_address(h, p)}}}
                    for h, p in endpoints
                ]
            }
        ],
    }
    return cluster


def socket_address(host: str, port: int) -> Config:
    return {"address": host, "port_value": port}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
