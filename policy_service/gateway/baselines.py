"""The benchmark's baselines: Envoy without the policy service, to measure what it costs.

``render_bare_baseline_config`` is Envoy alone; ``render_native_baseline_config`` is Envoy's
own ``jwt_authn`` + ``local_ratelimit``. Both answer every request with a 200 of their own,
like the benchmark's gateway route (a direct-response ``UpstreamRoute``) does.
"""

from __future__ import annotations

from policy_service.errors import ConfigError
from policy_service.gateway.bootstrap import bootstrap
from policy_service.gateway.filters import router_filter
from policy_service.gateway.layout import TYPE_URL, Config
from policy_service.gateway.listeners import (
    HcmParts,
    http_connection_manager,
    listener,
    stdout_access_log,
)

JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"
LOCAL_RATELIMIT_FILTER = "envoy.filters.http.local_ratelimit"


def render_bare_baseline_config(
    plain_port: int,
    admin_port: int,
    *,
    listen_address: str = "127.0.0.1",
    body: str = "ok",
    access_log: bool = True,
) -> Config:
    """Baseline (a): Envoy alone, answering every request with 200 itself."""
    logs = [stdout_access_log()] if access_log else []
    parts = HcmParts(_direct_route_config(body), [_read_whole_request(), router_filter()], logs)
    hcm = http_connection_manager("ingress_http", parts)
    return bootstrap(admin_port, [listener("plain_http", listen_address, plain_port, hcm)], [])


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
            "@type": TYPE_URL + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
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
            "@type": TYPE_URL + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
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
    filters = [jwt_authn, local_ratelimit, _read_whole_request(), router_filter()]
    logs = [stdout_access_log()] if access_log else []
    parts = HcmParts(_direct_route_config(body), filters, logs)
    hcm = http_connection_manager("ingress_http", parts)
    return bootstrap(admin_port, [listener("plain_http", listen_address, plain_port, hcm)], [])


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
