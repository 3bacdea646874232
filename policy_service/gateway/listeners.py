"""The gateway's listeners: the HTTP connection manager both share, its access log, and TLS.

The connection manager is where the edge's path and header rules live: paths are normalized
before routing and before ext_authz sees them (a path that routes one way and authorizes
another is an authorization bypass), and streams are never buffered or cut (no request
timeout; only a stream idle for ``STREAM_IDLE_TIMEOUT`` is reclaimed). What is bounded is
what a client can hold without sending anything: its request headers must arrive within
``REQUEST_HEADERS_TIMEOUT``, and a connection with no stream is closed after
``CONNECTION_IDLE_TIMEOUT``.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy_service.gateway.layout import TYPE_URL, Config, EnvoyLayout

# Long enough for an idle SSE or WebSocket session to survive; short enough that a stream a
# client abandoned without closing is eventually reclaimed.
STREAM_IDLE_TIMEOUT = "3600s"
REQUEST_HEADERS_TIMEOUT = "10s"  # EnvoyLayout.request_headers_timeout_seconds's default
CONNECTION_IDLE_TIMEOUT = "300s"


@dataclass(frozen=True)
class HcmParts:
    """What goes into a connection manager. Both gateway listeners get the same objects, so
    the YAML dump writes them once (see ``envoy_yaml``)."""

    route_config: Config
    http_filters: list[Config]
    access_log: list[Config]
    tracing: Config | None = None
    request_headers_timeout: str = REQUEST_HEADERS_TIMEOUT


def http_connection_manager(stat_prefix: str, parts: HcmParts) -> Config:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": TYPE_URL
            + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "generate_request_id": True,
            # Envoy is the edge: the peer address is the client, and x-forwarded-for from
            # the client is not trusted.
            "use_remote_address": True,
            # Routing, ext_authz and the backend must all see the same path: "/a/../b",
            # "//b" and "%2F" tricks would otherwise authorize one upstream and reach another.
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
            "common_http_protocol_options": {
                # "x_user" and "x-user" can become the same header further down the line:
                # a way to smuggle identity headers past the policy service.
                "headers_with_underscores_action": "REJECT_REQUEST",
                # A connection with no stream open is closed after this: idle keep-alives
                # would otherwise hold their slot until the connection cap.
                "idle_timeout": CONNECTION_IDLE_TIMEOUT,
            },
            # A client must finish its request headers within this, or the stream is reset:
            # slow-header clients (slowloris) cannot hold connections open. Streams, once
            # their headers are in, are not cut by it.
            "request_headers_timeout": parts.request_headers_timeout,
            "http2_protocol_options": {
                "max_concurrent_streams": 100,
                "initial_stream_window_size": 65536,
                "initial_connection_window_size": 1048576,
            },
            # No request_timeout (it would cut long streams); an idle stream is reclaimed.
            "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
            "upgrade_configs": [{"upgrade_type": "websocket"}],
            **({"tracing": parts.tracing} if parts.tracing else {}),
            **({"access_log": parts.access_log} if parts.access_log else {}),
            "http_filters": parts.http_filters,
            "route_config": parts.route_config,
        },
    }


def stdout_access_log(*, trace_id: bool = False) -> Config:
    # trace_id (the active span's, so a log line leads to its trace) only when tracing is on:
    # without a tracer it would be a null in every line.
    traced = {"trace_id": "%TRACE_ID%"} if trace_id else {}
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": TYPE_URL + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    **traced,
                    "decision_id": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%",
                    "method": "%REQ(:METHOD)%",
                    # Never the query string: clients put tokens there.
                    "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "flags": "%RESPONSE_FLAGS%",
                    "upstream": "%UPSTREAM_CLUSTER%",
                    "duration_ms": "%DURATION%",
                    "bytes_in": "%BYTES_RECEIVED%",
                    "bytes_out": "%BYTES_SENT%",
                },
                "formatters": [
                    {
                        "name": "envoy.formatter.req_without_query",
                        "typed_config": {
                            "@type": TYPE_URL
                            + "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
                        },
                    }
                ],
            },
        },
    }


def listener(name: str, address: str, port: int, hcm: Config) -> Config:
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [hcm]}],
    }


def downstream_tls(layout: EnvoyLayout) -> Config:
    common: Config = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "alpn_protocols": ["h2", "http/1.1"],
        "tls_certificates": [
            {
                "certificate_chain": {"filename": layout.tls_cert_file},
                "private_key": {"filename": layout.tls_key_file},
            }
        ],
    }
    context: Config = {
        "@type": TYPE_URL + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common,
    }
    if layout.tls_client_ca_file:
        common["validation_context"] = {"trusted_ca": {"filename": layout.tls_client_ca_file}}
        context["require_client_certificate"] = False
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}
