"""Envoy bootstrap configs for the gateway, rendered from a small frozen layout.

``render_envoy_config`` is a pure function: ``EnvoyLayout`` in, a plain dict (the Envoy v3
bootstrap as YAML/JSON would spell it) out. Nothing here starts Envoy or touches files, except
``main``, which regenerates the checked-in reference config ``envoy/envoy.yaml``::

    python -m policy_service.gateway.envoy_config           # rewrite envoy/envoy.yaml
    python -m policy_service.gateway.envoy_config --check   # exit 1 if it is out of date

The choices that matter for security and streaming, each explained where it is made:

* ext_authz fails closed: ``failure_mode_allow: false`` and ``status_on_error: 503``, so an
  outage of the policy service is never an allow and never looks like a policy denial.
* ext_authz sees the body (raw bytes, truncated at ``max_request_bytes``, never rejected by
  Envoy) so the service can read the JSON-RPC method and deny truncated bodies itself.
* Streams are never buffered or cut: no route timeout, no route idle timeout, no buffer filter.
* Paths are normalized before routing and before ext_authz sees them: a path that routes one way
  and authorizes another is an authorization bypass.
* With an ``OtlpCollector``, Envoy reports its own spans (one per request, one per ext_authz
  call) and passes the trace on to the policy service in the Check call's ``traceparent``.

Two benchmark baselines render here too: ``render_bare_baseline_config`` (Envoy alone) and
``render_native_baseline_config`` (Envoy's own ``jwt_authn`` + ``local_ratelimit``).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from policy_service.errors import ConfigError

Config = dict[str, Any]

AUTHZ_CLUSTER = "authz"
OTEL_COLLECTOR_CLUSTER = "otel_collector"
OPENTELEMETRY_TRACER = "envoy.tracers.opentelemetry"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
ROUTER_FILTER = "envoy.filters.http.router"
JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"
LOCAL_RATELIMIT_FILTER = "envoy.filters.http.local_ratelimit"
CATCH_ALL_ROUTE = "catch_all"
PROTOCOLS = ("mcp", "a2a", "http")

_TYPE = "type.googleapis.com/"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

# Long enough for an idle SSE or WebSocket session to survive; short enough that a stream a
# client abandoned without closing is eventually reclaimed.
STREAM_IDLE_TIMEOUT = "3600s"


@dataclass(frozen=True)
class UpstreamRoute:
    """One MCP server, A2A agent or plain HTTP service behind the gateway.

    ``backend_port == 0`` (or a ``direct_response_body``) renders a route that Envoy answers
    itself with 200 after ext_authz allowed it: the benchmark's way to measure only the
    gateway's own cost.
    """

    name: str
    path_prefix: str  # "/fininfo/": must start and end with "/"
    backend_host: str
    backend_port: int
    rewrite_prefix: str = "/"
    protocol: str = "mcp"  # mcp | a2a | http, sent to the policy service per route
    backend_http2: bool = False  # h2c to the backend (A2A gRPC binding); else HTTP/1.1
    direct_response_body: str | None = None

    @property
    def is_direct_response(self) -> bool:
        return self.backend_port == 0 or self.direct_response_body is not None

    @property
    def cluster_name(self) -> str:
        return f"upstream_{self.name}"


@dataclass(frozen=True)
class AuthzEndpoint:
    """One policy-service process. Several endpoints share the load round robin."""

    host: str
    port: int


@dataclass(frozen=True)
class OtlpCollector:
    """An OTLP/gRPC trace collector (an OpenTelemetry Collector, Jaeger, Tempo, ...).

    ``tls`` (from an ``https://`` endpoint) speaks TLS, verified against the system's root
    certificates (see ``_collector_tls`` for what that does not check).
    """

    host: str
    port: int
    tls: bool = False


def otlp_collector_from_endpoint(endpoint: str) -> OtlpCollector:
    """The collector named the way ``OTEL_EXPORTER_OTLP_ENDPOINT`` names one.

    ``http://host:4317``, ``https://host:4317`` and ``host:4317``; anything else (another
    scheme, no port, a path, credentials) raises ``ConfigError``.
    """
    text = endpoint.strip()
    # urlsplit would read "host:4317" as scheme "host" and path "4317".
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "https"):
        raise _endpoint_error(endpoint, f"scheme {parts.scheme!r} is not http or https")
    if parts.username is not None or parts.query or parts.fragment:
        raise _endpoint_error(endpoint, "credentials, query and fragment are not allowed")
    if parts.path not in ("", "/"):
        # OTLP/gRPC has a fixed method, no path; a path means an OTLP/HTTP endpoint (4318).
        raise _endpoint_error(endpoint, "OTLP/gRPC takes no path")
    if not parts.hostname:
        raise _endpoint_error(endpoint, "a host is required")
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = 0
    if port is None:
        # No default: the scheme's (80, 443) is rarely where a collector listens.
        raise _endpoint_error(endpoint, "a port is required (OTLP/gRPC is usually 4317)")
    if port == 0:
        raise _endpoint_error(endpoint, "the port must be a number in 1..65535")
    return OtlpCollector(parts.hostname, port, tls=parts.scheme == "https")


def _endpoint_error(endpoint: str, reason: str) -> ConfigError:
    return ConfigError(
        f"OTLP endpoint {endpoint!r}: {reason}; "
        "use http://HOST:PORT, https://HOST:PORT or HOST:PORT"
    )


@dataclass(frozen=True)
class EnvoyLayout:
    upstreams: tuple[UpstreamRoute, ...]
    authz: tuple[AuthzEndpoint, ...]
    listen_address: str = "127.0.0.1"
    plain_port: int | None = 8080
    tls_port: int | None = 8443
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # When set, the TLS listener asks for (but does not require) a client certificate signed
    # by this CA; the policy service then sees it through include_peer_certificate.
    tls_client_ca_file: str | None = None
    admin_port: int = 9901
    # The admin interface has no authentication: loopback unless a container needs more
    # (Prometheus scraping /stats/prometheus from next door).
    admin_address: str = "127.0.0.1"
    max_request_bytes: int = 65536
    authz_timeout_seconds: float = 1.0
    authz_tls: bool = False
    authz_ca_file: str | None = None
    authz_cert_file: str | None = None  # client certificate for mTLS to the policy service
    authz_key_file: str | None = None
    authz_sni: str | None = None
    # Envoy keeps one HTTP/2 connection per worker thread and endpoint; a stream limit makes
    # it open more connections when busy (a lever for spreading load over processes).
    authz_max_concurrent_streams: int | None = None
    access_log: bool = True  # JSON lines on stdout; benchmarks may turn it off
    # Envoy's own spans go to this collector; None renders no tracing at all.
    otlp_collector: OtlpCollector | None = None
    trace_sampling_percent: float = 100.0  # of all requests, whatever the client asks
    # Envoy's OpenTelemetry tracer buffers spans per worker thread; see _tracing_runtime.
    trace_flush_interval_ms: int = 1000


def render_envoy_config(layout: EnvoyLayout) -> Config:
    """The Envoy bootstrap for ``layout``. Raises ``ConfigError`` for an inconsistent layout."""
    _check_layout(layout)
    # One route config, filter list and access log, shared by both listeners (same objects,
    # so the YAML dump writes them once).
    collector = layout.otlp_collector
    shared = _HcmParts(
        route_config=_route_config(layout.upstreams),
        http_filters=[_ext_authz_filter(layout), _router_filter()],
        access_log=[_access_log(trace_id=collector is not None)] if layout.access_log else [],
        tracing=_tracing(layout) if collector is not None else None,
    )
    listeners: list[Config] = []
    if layout.plain_port is not None:
        hcm = _http_connection_manager("ingress_http", shared)
        listeners.append(_listener("plain_http", layout.listen_address, layout.plain_port, hcm))
    if layout.tls_port is not None:
        hcm = _http_connection_manager("ingress_https", shared)
        listener = _listener("tls_https", layout.listen_address, layout.tls_port, hcm)
        listener["filter_chains"][0]["transport_socket"] = _downstream_tls(layout)
        listeners.append(listener)
    clusters = [_authz_cluster(layout)]
    clusters += [_backend_cluster(u) for u in layout.upstreams if not u.is_direct_response]
    if collector is None:
        return _bootstrap(layout.admin_port, listeners, clusters, admin=layout.admin_address)
    clusters.append(_otel_collector_cluster(collector))
    runtime = _tracing_runtime(layout.trace_flush_interval_ms)
    return _bootstrap(
        layout.admin_port, listeners, clusters, runtime=runtime, admin=layout.admin_address
    )


def dump_envoy_yaml(layout: EnvoyLayout) -> str:
    return dump_yaml(render_envoy_config(layout))


def dump_yaml(config: Config) -> str:
    """YAML in Envoy's field order. Parts both listeners share (route config, filters, access
    log) are written once with an anchor named after their field (``&route_config``) and
    referred to as ``*route_config``: the file says what is shared instead of repeating it.
    """
    return yaml.dump(config, Dumper=_EnvoyDumper, sort_keys=False, width=100)


class _EnvoyDumper(yaml.SafeDumper):
    """Names anchors after the mapping key their value first appears under."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._field_of: dict[int, str] = {}
        self._anchors_used: set[str] = set()

    def ignore_aliases(self, data: Any) -> bool:
        # Only containers are worth sharing; repeated strings and numbers stay inline.
        return not isinstance(data, dict | list)

    def represent_mapping(self, tag: str, mapping: Any, flow_style: Any = None) -> yaml.MappingNode:
        node = super().represent_mapping(tag, mapping, flow_style)
        for key_node, value_node in node.value:
            self._field_of.setdefault(id(value_node), str(key_node.value))
        return node

    def generate_anchor(self, node: yaml.Node) -> str:
        base = self._field_of.get(id(node), "shared")
        anchor, count = base, 1
        while anchor in self._anchors_used:
            count += 1
            anchor = f"{base}_{count}"
        self._anchors_used.add(anchor)
        return anchor


# -- checks -------------------------------------------------------------------------------


def _check_layout(layout: EnvoyLayout) -> None:
    # An empty authz list would mean "no policy": refuse instead of rendering an open gateway.
    if not layout.authz:
        raise ConfigError("envoy layout: at least one authz endpoint is required")
    if layout.plain_port is None and layout.tls_port is None:
        raise ConfigError("envoy layout: set plain_port, tls_port or both")
    if layout.tls_port is not None and not (layout.tls_cert_file and layout.tls_key_file):
        raise ConfigError("envoy layout: tls_port needs tls_cert_file and tls_key_file")
    if layout.max_request_bytes <= 0:
        raise ConfigError("envoy layout: max_request_bytes must be positive")
    if layout.authz_timeout_seconds <= 0:
        raise ConfigError("envoy layout: authz_timeout_seconds must be positive")
    if layout.authz_tls and not layout.authz_ca_file:
        # TLS without verifying the policy service would let anyone answer "allow".
        raise ConfigError("envoy layout: authz_tls needs authz_ca_file")
    if bool(layout.authz_cert_file) != bool(layout.authz_key_file):
        raise ConfigError("envoy layout: set both authz_cert_file and authz_key_file, or neither")
    if not 0 <= layout.trace_sampling_percent <= 100:
        raise ConfigError("envoy layout: trace_sampling_percent must be 0..100")
    if layout.trace_flush_interval_ms <= 0:
        raise ConfigError("envoy layout: trace_flush_interval_ms must be positive")
    collector = layout.otlp_collector
    if collector is not None and not (collector.host and 0 < collector.port <= 65535):
        raise ConfigError("envoy layout: otlp_collector needs a host and a port in 1..65535")
    names: set[str] = set()
    prefixes: set[str] = set()
    for upstream in layout.upstreams:
        _check_upstream(upstream)
        if upstream.name in names:
            raise ConfigError(f"envoy layout: upstream name {upstream.name!r} is used twice")
        if upstream.path_prefix in prefixes:
            raise ConfigError(f"envoy layout: path_prefix {upstream.path_prefix!r} is used twice")
        names.add(upstream.name)
        prefixes.add(upstream.path_prefix)


def _check_upstream(upstream: UpstreamRoute) -> None:
    where = f"envoy layout: upstream {upstream.name!r}"
    if not _NAME_RE.match(upstream.name):
        raise ConfigError(f"{where}: name must match {_NAME_RE.pattern}")
    if upstream.protocol not in PROTOCOLS:
        raise ConfigError(f"{where}: protocol must be one of {', '.join(PROTOCOLS)}")
    # A prefix without the trailing slash would also match "/fininfo-admin/...".
    prefix = upstream.path_prefix
    if not (prefix.startswith("/") and prefix.endswith("/")) or prefix == "/":
        raise ConfigError(f"{where}: path_prefix must look like '/name/' (not '/')")
    if not upstream.rewrite_prefix.startswith("/"):
        raise ConfigError(f"{where}: rewrite_prefix must start with '/'")
    if not 0 <= upstream.backend_port <= 65535:
        raise ConfigError(f"{where}: backend_port must be 0..65535")


# -- routes -------------------------------------------------------------------------------


def _route_config(upstreams: Sequence[UpstreamRoute]) -> Config:
    # Longest prefix first, so "/agents/helper/" is never shadowed by "/agents/".
    ordered = sorted(upstreams, key=lambda u: len(u.path_prefix), reverse=True)
    routes = [_upstream_route(u) for u in ordered]
    routes.append(_catch_all_route())
    return {
        "name": "gateway",
        "virtual_hosts": [{"name": "gateway", "domains": ["*"], "routes": routes}],
    }


def _upstream_route(upstream: UpstreamRoute) -> Config:
    route: Config = {"name": upstream.name, "match": {"prefix": upstream.path_prefix}}
    if upstream.is_direct_response:
        body = upstream.direct_response_body if upstream.direct_response_body is not None else ""
        route["direct_response"] = {"status": 200, "body": {"inline_string": body}}
    else:
        route["route"] = {
            "cluster": upstream.cluster_name,
            "prefix_rewrite": upstream.rewrite_prefix,
            # The client's Host names the gateway, which means nothing to a backend that
            # checks Host (the MCP SDK's DNS-rebinding guard does); keep the original in
            # x-forwarded-host.
            "host_rewrite_literal": f"{upstream.backend_host}:{upstream.backend_port}",
            "append_x_forwarded_host": True,
            # SSE and long A2A tasks: no deadline for the whole stream and no idle cut-off
            # per route (the HCM's stream_idle_timeout still reclaims abandoned streams).
            "timeout": "0s",
            "idle_timeout": "0s",
        }
    route["typed_per_filter_config"] = {
        EXT_AUTHZ_FILTER: {
            "@type": _TYPE + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            # The policy service keys its policy on these, not on the (rewritable) path.
            "check_settings": {
                "context_extensions": {"upstream": upstream.name, "protocol": upstream.protocol}
            },
        }
    }
    return route


def _catch_all_route() -> Config:
    # ext_authz stays enabled here and this route carries no "upstream" context extension:
    # the policy service answers public discovery documents (OAuth protected-resource
    # metadata) on it with a "denied" response of status 200, and denies anything else.
    # Only what it explicitly allows falls through to this 404.
    return {
        "name": CATCH_ALL_ROUTE,
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": "not found"}},
    }


# -- HTTP filters -------------------------------------------------------------------------


def _ext_authz_filter(layout: EnvoyLayout) -> Config:
    return {
        "name": EXT_AUTHZ_FILTER,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": AUTHZ_CLUSTER},
                "timeout": _duration(layout.authz_timeout_seconds),
                "retry_policy": _authz_retry_policy(),
            },
            "transport_api_version": "V3",
            # Fail closed: an unreachable, slow or crashing policy service is a 503, never an
            # allow, and never the 403 a client would take for a policy decision.
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
            # The body is needed to read the JSON-RPC method and tool. Partial messages go
            # through (marked by x-envoy-auth-partial-body: true) instead of Envoy's own 413,
            # so the service can deny a truncated tool call with an error the client can read.
            # Raw bytes, because Envoy's UTF-8 "body" field would mangle non-UTF-8 input.
            "with_request_body": {
                "max_request_bytes": layout.max_request_bytes,
                "allow_partial_message": True,
                "pack_as_bytes": True,
            },
            "include_peer_certificate": True,
            # header_map with each header as sent, not the "headers" map whose repeated
            # values Envoy joins with "," (two Authorization headers must be visible as two).
            "encode_raw_headers": True,
            # An invalid header mutation from the service is a 500, not a half-applied one.
            "validate_mutations": True,
            "stat_prefix": "policy",
        },
    }


def _authz_retry_policy() -> Config:
    # Retry only failures where the check never reached a policy service (no connection, or
    # the stream refused before processing), and on another process: a check that did run
    # may have spent rate-limit tokens and must not be sent twice.
    return {
        "retry_on": "connect-failure,refused-stream",
        "num_retries": 1,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _TYPE
                    + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }


def _read_whole_request(max_request_bytes: int = 65536) -> Config:
    """Envoy's buffer filter, for the benchmark baselines only.

    A direct-response route answers a POST as soon as its headers arrive, before the body
    is read, and Envoy's HTTP/1.1 codec then sends ``connection: close``: every baseline
    request would pay for a new TCP connection, while the gateway (whose ext_authz reads
    the body first) keeps its connections. Reading the whole request makes them comparable.
    """
    return {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": max_request_bytes,
        },
    }


def _router_filter() -> Config:
    return {
        "name": ROUTER_FILTER,
        "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
    }


# -- listeners ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _HcmParts:
    route_config: Config
    http_filters: list[Config]
    access_log: list[Config]
    tracing: Config | None = None


def _http_connection_manager(stat_prefix: str, parts: _HcmParts) -> Config:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _TYPE
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
            },
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


def _access_log(*, trace_id: bool = False) -> Config:
    # trace_id (the active span's, so a log line leads to its trace) only when tracing is on:
    # without a tracer it would be a null in every line.
    traced = {"trace_id": "%TRACE_ID%"} if trace_id else {}
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
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
                            "@type": _TYPE
                            + "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
                        },
                    }
                ],
            },
        },
    }


def _tracing(layout: EnvoyLayout) -> Config:
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
                "@type": _TYPE + "envoy.config.trace.v3.OpenTelemetryConfig",
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


def _tracing_runtime(flush_interval_ms: int) -> Config:
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


def _listener(name: str, address: str, port: int, hcm: Config) -> Config:
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [hcm]}],
    }


def _downstream_tls(layout: EnvoyLayout) -> Config:
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
        "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common,
    }
    if layout.tls_client_ca_file:
        common["validation_context"] = {"trusted_ca": {"filename": layout.tls_client_ca_file}}
        context["require_client_certificate"] = False
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


# -- clusters -----------------------------------------------------------------------------


def _authz_cluster(layout: EnvoyLayout) -> Config:
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
        "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    }
    if layout.authz_sni:
        context["sni"] = layout.authz_sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _otel_collector_cluster(collector: OtlpCollector) -> Config:
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
        "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "validation_context": {"system_root_certs": {}},
        },
    }
    if not _is_ip(collector.host):
        context["sni"] = collector.host  # an IP address is never a valid SNI name
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _backend_cluster(upstream: UpstreamRoute) -> Config:
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
                "@type": _TYPE + _HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": http2},
            }
        }
    cluster["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": _socket(h, p)}}}
                    for h, p in endpoints
                ]
            }
        ],
    }
    return cluster


def _socket(host: str, port: int) -> Config:
    return {"address": host, "port_value": port}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _duration(seconds: float) -> str:
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _bootstrap(
    admin_port: int,
    listeners: list[Config],
    clusters: list[Config],
    *,
    runtime: Config | None = None,
    admin: str = "127.0.0.1",
) -> Config:
    return {
        "admin": {"address": {"socket_address": _socket(admin, admin_port)}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        **({"layered_runtime": runtime} if runtime is not None else {}),
        # Envoy warns (and an edge proxy should not run) without a global connection cap.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _TYPE
                        + "envoy.extensions.resource_monitors.downstream_connections.v3"
                        + ".DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 50000,
                    },
                }
            ]
        },
    }


# -- benchmark baselines ------------------------------------------------------------------


def render_bare_baseline_config(
    plain_port: int,
    admin_port: int,
    *,
    listen_address: str = "127.0.0.1",
    body: str = "ok",
    access_log: bool = True,
) -> Config:
    """Baseline (a): Envoy alone, answering every request with 200 itself."""
    logs = [_access_log()] if access_log else []
    parts = _HcmParts(_direct_route_config(body), [_read_whole_request(), _router_filter()], logs)
    hcm = _http_connection_manager("ingress_http", parts)
    listener = _listener("plain_http", listen_address, plain_port, hcm)
    return _bootstrap(admin_port, [listener], [])


def render_native_baseline_config(
    plain_port: int,
    admin_port: int,
    jwks_json: str,
    issuer: str,
    audience: str,
    *,
    listen_address: str = "127.0.0.1",
    body: str = "ok",
    rate_limit_tokens: int = 10_000_000,
    access_log: bool = True,
) -> Config:
    """Baseline (b): Envoy's C++ jwt_authn + local_ratelimit in front of a 200 direct response.

    Every request needs a JWT from ``issuer`` for ``audience`` signed by a key in
    ``jwks_json`` (inline, so no JWKS fetch is measured). The token bucket refills
    ``rate_limit_tokens`` per second: the filter does its bookkeeping but never trips.
    """
    if rate_limit_tokens <= 0:
        raise ConfigError("native baseline: rate_limit_tokens must be positive")
    jwt_authn = {
        "name": JWT_AUTHN_FILTER,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                "bench": {
                    "issuer": issuer,
                    "audiences": [audience],
                    "local_jwks": {"inline_string": jwks_json},
                    # Like our service: the backend never sees the client's token.
                    "forward": False,
                    "payload_in_metadata": "jwt_payload",
                }
            },
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }
    percent_100 = {"numerator": 100, "denominator": "HUNDRED"}
    local_ratelimit = {
        "name": LOCAL_RATELIMIT_FILTER,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench_rate_limit",
            "token_bucket": {
                "max_tokens": rate_limit_tokens,
                "tokens_per_fill": rate_limit_tokens,
                "fill_interval": "1s",
            },
            "filter_enabled": {"runtime_key": "bench_rl_enabled", "default_value": percent_100},
            "filter_enforced": {"runtime_key": "bench_rl_enforced", "default_value": percent_100},
        },
    }
    filters = [jwt_authn, local_ratelimit, _read_whole_request(), _router_filter()]
    logs = [_access_log()] if access_log else []
    parts = _HcmParts(_direct_route_config(body), filters, logs)
    hcm = _http_connection_manager("ingress_http", parts)
    listener = _listener("plain_http", listen_address, plain_port, hcm)
    return _bootstrap(admin_port, [listener], [])


def _direct_route_config(body: str) -> Config:
    route = {
        "name": "direct",
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": body}},
    }
    return {
        "name": "baseline",
        "virtual_hosts": [{"name": "baseline", "domains": ["*"], "routes": [route]}],
    }


# -- the checked-in reference config ------------------------------------------------------

REFERENCE_CERT_FILE = "envoy/certs/tls.crt"
REFERENCE_KEY_FILE = "envoy/certs/tls.key"

_REFERENCE_HEADER = """\
# Reference Envoy config for the MCP/A2A policy service (ext_authz).
#
# GENERATED from policy_service.gateway.envoy_config.reference_layout(); do not edit by hand.
# Regenerate:  python -m policy_service.gateway.envoy_config
# A test fails when this file and the renderer disagree. envoy/README.md explains each part.
#
# Ports: plain HTTP 8080 and TLS 8443 on 127.0.0.1, admin 9901, policy service (gRPC) 9001,
# OTLP trace collector (gRPC; Jaeger and the OpenTelemetry Collector listen there) 4317.
# Upstreams: /fininfo/ and /currenttime/ (MCP servers), /agents/helper/ (an A2A agent).
#
# The TLS listener reads envoy/certs/tls.crt and envoy/certs/tls.key, relative to Envoy's
# working directory (run Envoy from the repository root). These files are not checked in:
# the dev stack creates a fresh self-signed pair at start with
# policy_service.gateway.certs.generate_self_signed(); by hand:
#     python -m policy_service.gateway.certs envoy/certs
# In production, mount your own certificate and key at these paths.
"""


def reference_layout() -> EnvoyLayout:
    return EnvoyLayout(
        upstreams=(
            UpstreamRoute("fininfo", "/fininfo/", "127.0.0.1", 9101),
            UpstreamRoute("currenttime", "/currenttime/", "127.0.0.1", 9102),
            UpstreamRoute("helper", "/agents/helper/", "127.0.0.1", 9103, protocol="a2a"),
        ),
        authz=(AuthzEndpoint("127.0.0.1", 9001),),
        tls_cert_file=REFERENCE_CERT_FILE,
        tls_key_file=REFERENCE_KEY_FILE,
        otlp_collector=OtlpCollector("127.0.0.1", 4317),
        trace_sampling_percent=100.0,
    )


def render_reference_yaml() -> str:
    """The exact text of the checked-in ``envoy/envoy.yaml``."""
    return _REFERENCE_HEADER + "\n" + dump_envoy_yaml(reference_layout())


def default_reference_path() -> Path:
    # policy_service/gateway/envoy_config.py -> repository root (source checkouts only).
    return Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m policy_service.gateway.envoy_config",
        description="Regenerate (or --check) the reference Envoy config.",
    )
    parser.add_argument("--output", type=Path, default=None, help="default: envoy/envoy.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    path: Path = args.output or default_reference_path()
    text = render_reference_yaml()
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date; run: {parser.prog}", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
