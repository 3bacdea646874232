"""What the Envoy renderer takes: a small frozen layout, checked before anything is rendered.

``EnvoyLayout`` names the listeners, the upstream routes (``UpstreamRoute``), the policy
service's endpoints (``AuthzEndpoint``) and an optional trace collector (``OtlpCollector``).
``check_layout`` refuses an inconsistent one with ``ConfigError``; the builders in
``policy_service.gateway.bootstrap`` turn a checked one into ``Config``, the Envoy v3
bootstrap as YAML/JSON would spell it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from policy_service.errors import ConfigError

Config = dict[str, Any]

# The prefix of every typed_config's "@type".
TYPE_URL = "type.googleapis.com/"

PROTOCOLS = ("mcp", "a2a", "http")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

# Envoy keeps one HTTP/2 connection per worker thread and endpoint, and sends it every
# check the thread has, however many. Several service processes behind one endpoint (serve
# --workers, SO_REUSEPORT) get checks only through connections, each handed to one process
# by the kernel's hash: 2 streams per connection make Envoy open a connection for every two
# checks in flight, enough for the hash to spread them. Measured (bench/README.md, 2
# workers, 16 checks in flight): 8 streams gave 3 connections and every check on one
# worker in 2 runs of 6; 2 gave 10 connections and 40-60% at worst; 1 gave 20 and 45-55%,
# but cost the floor 12% more CPU per check (2: 3%; one process's policy checks: 1%).
AUTHZ_MAX_CONCURRENT_STREAMS = 2


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
    direct_response_content_type: str | None = None  # e.g. application/json for a canned answer

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
    certificates (see ``clusters._collector_tls`` for what that does not check).
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
    # How long Envoy waits for the response side's reply to one answer message (headers,
    # or one body chunk); past it, the answer fails closed.
    answer_timeout_seconds: float = 2.0
    # A client's request headers must arrive within this (slow-header clients).
    request_headers_timeout_seconds: float = 10.0
    authz_tls: bool = False
    authz_ca_file: str | None = None
    authz_cert_file: str | None = None  # client certificate for mTLS to the policy service
    authz_key_file: str | None = None
    authz_sni: str | None = None
    # Streams per connection to the service before Envoy opens another (None: no limit);
    # see AUTHZ_MAX_CONCURRENT_STREAMS.
    authz_max_concurrent_streams: int | None = AUTHZ_MAX_CONCURRENT_STREAMS
    access_log: bool = True  # JSON lines on stdout; benchmarks may turn it off
    # Envoy's own spans go to this collector; None renders no tracing at all.
    otlp_collector: OtlpCollector | None = None
    trace_sampling_percent: float = 100.0  # of all requests, whatever the client asks
    # Envoy's OpenTelemetry tracer buffers spans per worker thread; see tracing_runtime.
    trace_flush_interval_ms: int = 1000
    # The response side (ext_proc, for answers the check planned). Off renders the gateway as it was
    # before it: ext_authz alone (the benchmark's control row).
    response_side: bool = True


def check_layout(layout: EnvoyLayout) -> None:
    """Raise ``ConfigError`` for a layout that would render a broken or open gateway."""
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
    if layout.answer_timeout_seconds <= 0:
        raise ConfigError("envoy layout: answer_timeout_seconds must be positive")
    if layout.request_headers_timeout_seconds <= 0:
        raise ConfigError("envoy layout: request_headers_timeout_seconds must be positive")
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
