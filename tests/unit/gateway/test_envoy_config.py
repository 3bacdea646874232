"""The rendered Envoy config, checked as data (the real Envoy runs in tests/integration)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from policy_service.errors import ConfigError
from policy_service.gateway.baselines import (
    render_bare_baseline_config,
    render_native_baseline_config,
)
from policy_service.gateway.bootstrap import render_envoy_config
from policy_service.gateway.certs import generate_self_signed
from policy_service.gateway.envoy_yaml import dump_envoy_yaml
from policy_service.gateway.filters import RESPONSE_PLAN_KEY
from policy_service.gateway.layout import (
    AuthzEndpoint,
    EnvoyLayout,
    OtlpCollector,
    UpstreamRoute,
    otlp_collector_from_endpoint,
)

Config = dict[str, Any]

LAYOUT = EnvoyLayout(
    upstreams=(
        UpstreamRoute("fininfo", "/fininfo/", "127.0.0.1", 9101),
        UpstreamRoute("agents", "/agents/", "127.0.0.1", 9104, protocol="http"),
        UpstreamRoute("helper", "/agents/helper/", "helper.internal", 9103, protocol="a2a"),
    ),
    authz=(AuthzEndpoint("127.0.0.1", 9001),),
    tls_cert_file="/certs/tls.crt",
    tls_key_file="/certs/tls.key",
)
TRACED = replace(LAYOUT, otlp_collector=OtlpCollector("127.0.0.1", 4317))


def listeners(config: Config) -> dict[str, Config]:
    return {item["name"]: item for item in config["static_resources"]["listeners"]}


def hcm(listener: Config) -> Config:
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    typed: Config = manager["typed_config"]
    return typed


def first_hcm(config: Config) -> Config:
    return hcm(config["static_resources"]["listeners"][0])


def http_filter(config: Config, name: str) -> Config:
    (found,) = [f for f in first_hcm(config)["http_filters"] if f["name"] == name]
    typed: Config = found["typed_config"]
    return typed


def ext_authz(config: Config) -> Config:
    return http_filter(config, "envoy.filters.http.ext_authz")


def routes(config: Config) -> list[Config]:
    (vhost,) = first_hcm(config)["route_config"]["virtual_hosts"]
    found: list[Config] = vhost["routes"]
    return found


def clusters(config: Config) -> dict[str, Config]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def endpoints(cluster: Config) -> list[tuple[str, int]]:
    (group,) = cluster["load_assignment"]["endpoints"]
    addresses = [e["endpoint"]["address"]["socket_address"] for e in group["lb_endpoints"]]
    return [(a["address"], a["port_value"]) for a in addresses]


def access_log_fields(config: Config) -> Config:
    (log,) = first_hcm(config)["access_log"]
    fields: Config = log["typed_config"]["log_format"]["json_format"]
    return fields


# -- ext_authz ----------------------------------------------------------------------------


def test_ext_authz_fails_closed_with_503() -> None:
    authz = ext_authz(render_envoy_config(LAYOUT))
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": 503}
    assert authz["transport_api_version"] == "V3"
    assert authz["grpc_service"]["envoy_grpc"] == {"cluster_name": "authz"}
    assert authz["grpc_service"]["timeout"] == "1s"
    assert authz["validate_mutations"] is True


def test_authz_retries_only_checks_that_never_reached_a_service() -> None:
    retry = ext_authz(render_envoy_config(LAYOUT))["grpc_service"]["retry_policy"]
    assert set(retry["retry_on"].split(",")) == {"connect-failure", "refused-stream"}
    assert retry["num_retries"] == 1


def test_ext_authz_sees_raw_partial_body_and_raw_headers() -> None:
    authz = ext_authz(render_envoy_config(replace(LAYOUT, max_request_bytes=4096)))
    assert authz["with_request_body"] == {
        "max_request_bytes": 4096,
        "allow_partial_message": True,
        "pack_as_bytes": True,
    }
    assert authz["encode_raw_headers"] is True
    assert authz["include_peer_certificate"] is True


def test_fractional_authz_timeout_is_an_exact_duration() -> None:
    config = render_envoy_config(replace(LAYOUT, authz_timeout_seconds=0.25))
    assert ext_authz(config)["grpc_service"]["timeout"] == "0.25s"


def test_filters_are_ext_authz_then_ext_proc_then_router() -> None:
    names = [f["name"] for f in first_hcm(render_envoy_config(LAYOUT))["http_filters"]]
    assert names == [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]


def _ext_proc(config: Config) -> Config:
    (ext_proc,) = [
        f["typed_config"]
        for f in first_hcm(config)["http_filters"]
        if f["name"] == "envoy.filters.http.ext_proc"
    ]
    return ext_proc


def test_ext_proc_streams_answers_fails_closed_and_reads_the_checks_plan() -> None:
    wrapper = _ext_proc(render_envoy_config(LAYOUT))
    processor = wrapper["extension_config"]["typed_config"]
    assert processor["failure_mode_allow"] is False
    assert processor["grpc_service"]["envoy_grpc"]["cluster_name"] == "authz"
    mode = processor["processing_mode"]
    assert mode["request_header_mode"] == "SKIP"
    assert mode["response_body_mode"] == "STREAMED"  # never buffered whole by Envoy
    assert processor["allow_mode_override"] is True
    assert processor["metadata_options"]["forwarding_namespaces"]["untyped"] == [
        "envoy.filters.http.ext_authz"
    ]


def test_ext_proc_is_skipped_unless_the_check_left_a_plan() -> None:
    """The filter sits behind a matcher on the ext_authz metadata: a request the check gave
    no plan (a plain call, a denial, a reply Envoy made itself) opens no stream."""
    wrapper = _ext_proc(render_envoy_config(LAYOUT))
    assert wrapper["@type"].endswith("ExtensionWithMatcher")
    (matcher,) = wrapper["xds_matcher"]["matcher_list"]["matchers"]
    assert matcher["on_match"]["action"]["typed_config"]["@type"].endswith("SkipFilter")
    predicate = matcher["predicate"]["single_predicate"]
    source = predicate["input"]["typed_config"]
    assert source["@type"].endswith("DynamicMetadataInput")
    assert source["filter"] == "envoy.filters.http.ext_authz"
    assert source["path"] == [{"key": RESPONSE_PLAN_KEY}]
    absent = predicate["custom_match"]["typed_config"]
    assert absent["value"] == {"present_match": True}
    assert absent["invert"] is True


def test_the_plan_key_is_the_one_the_check_writes() -> None:
    from policy_service.responses.plan import PLAN_METADATA_KEY

    assert RESPONSE_PLAN_KEY == PLAN_METADATA_KEY


# -- routes -------------------------------------------------------------------------------


def test_each_upstream_route_names_its_upstream_to_the_policy_service() -> None:
    by_name = {r["name"]: r for r in routes(render_envoy_config(LAYOUT))}
    for upstream in LAYOUT.upstreams:
        per_route = by_name[upstream.name]["typed_per_filter_config"][
            "envoy.filters.http.ext_authz"
        ]
        assert per_route["@type"].endswith("ExtAuthzPerRoute")
        assert "disabled" not in per_route
        assert per_route["check_settings"]["context_extensions"] == {
            "upstream": upstream.name,
            "protocol": upstream.protocol,
        }


def test_routes_rewrite_the_prefix_and_never_time_out_streams() -> None:
    route = next(r for r in routes(render_envoy_config(LAYOUT)) if r["name"] == "fininfo")
    assert route["match"] == {"prefix": "/fininfo/"}
    action = route["route"]
    assert action["cluster"] == "upstream_fininfo"
    assert action["prefix_rewrite"] == "/"
    assert action["timeout"] == "0s"
    assert action["idle_timeout"] == "0s"


def test_longer_prefixes_come_first_and_the_catch_all_last() -> None:
    names = [r["name"] for r in routes(render_envoy_config(LAYOUT))]
    assert names.index("helper") < names.index("agents")  # "/agents/helper/" is not shadowed
    assert names[-1] == "catch_all"


def test_catch_all_is_404_with_ext_authz_still_enabled() -> None:
    catch_all = routes(render_envoy_config(LAYOUT))[-1]
    assert catch_all["match"] == {"prefix": "/"}
    assert catch_all["direct_response"]["status"] == 404
    # No per-route config at all: ext_authz runs, with no "upstream" context extension.
    assert "typed_per_filter_config" not in catch_all


def test_direct_response_upstream_answers_200_without_a_cluster() -> None:
    layout = replace(
        LAYOUT,
        upstreams=(
            UpstreamRoute("bench", "/bench/", "", 0),
            UpstreamRoute("echo", "/echo/", "", 0, direct_response_body='{"ok":true}'),
        ),
    )
    config = render_envoy_config(layout)
    by_name = {r["name"]: r for r in routes(config)}
    assert by_name["bench"]["direct_response"] == {"status": 200, "body": {"inline_string": ""}}
    assert by_name["echo"]["direct_response"]["body"] == {"inline_string": '{"ok":true}'}
    assert "typed_per_filter_config" in by_name["bench"]
    assert set(clusters(config)) == {"authz"}


# -- listeners ----------------------------------------------------------------------------


def test_plain_and_tls_listeners_share_one_route_config() -> None:
    config = render_envoy_config(LAYOUT)
    found = listeners(config)
    assert set(found) == {"plain_http", "tls_https"}
    plain, tls = found["plain_http"], found["tls_https"]
    assert plain["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8080}
    assert tls["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8443}
    assert hcm(plain)["route_config"] is hcm(tls)["route_config"]
    assert hcm(plain)["http_filters"] is hcm(tls)["http_filters"]
    assert "transport_socket" not in plain["filter_chains"][0]


def test_tls_listener_uses_the_certificate_files() -> None:
    tls = listeners(render_envoy_config(LAYOUT))["tls_https"]
    context = tls["filter_chains"][0]["transport_socket"]["typed_config"]
    assert context["@type"].endswith("DownstreamTlsContext")
    (certificate,) = context["common_tls_context"]["tls_certificates"]
    assert certificate == {
        "certificate_chain": {"filename": "/certs/tls.crt"},
        "private_key": {"filename": "/certs/tls.key"},
    }
    assert context["common_tls_context"]["alpn_protocols"] == ["h2", "http/1.1"]
    assert "validation_context" not in context["common_tls_context"]


def test_client_ca_asks_for_an_optional_client_certificate() -> None:
    config = render_envoy_config(replace(LAYOUT, tls_client_ca_file="/certs/ca.crt"))
    context = listeners(config)["tls_https"]["filter_chains"][0]["transport_socket"]
    typed = context["typed_config"]
    assert typed["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": "/certs/ca.crt"}
    }
    assert typed["require_client_certificate"] is False


def test_either_listener_can_be_left_out() -> None:
    plain_only = render_envoy_config(replace(LAYOUT, tls_port=None))
    tls_only = render_envoy_config(replace(LAYOUT, plain_port=None))
    assert set(listeners(plain_only)) == {"plain_http"}
    assert set(listeners(tls_only)) == {"tls_https"}


def test_connection_manager_closes_path_and_header_tricks() -> None:
    manager = first_hcm(render_envoy_config(LAYOUT))
    assert manager["use_remote_address"] is True
    assert manager["generate_request_id"] is True
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] in (
        "UNESCAPE_AND_REDIRECT",
        "REJECT_REQUEST",
    )
    options = manager["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] == "REJECT_REQUEST"


def test_connection_manager_keeps_streams_open() -> None:
    manager = first_hcm(render_envoy_config(LAYOUT))
    assert manager["stream_idle_timeout"] == "3600s"
    assert "request_timeout" not in manager


def test_access_log_never_logs_the_query_string() -> None:
    manager = first_hcm(render_envoy_config(LAYOUT))
    (log,) = manager["access_log"]
    fields = log["typed_config"]["log_format"]["json_format"]
    assert "REQ_WITHOUT_QUERY" in fields["path"]
    assert not any("(:PATH)" in value and "WITHOUT_QUERY" not in value for value in fields.values())
    assert "access_log" not in first_hcm(render_envoy_config(replace(LAYOUT, access_log=False)))


def test_admin_listens_on_loopback_only() -> None:
    admin = render_envoy_config(replace(LAYOUT, admin_port=9999))["admin"]
    assert admin["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9999}


# -- clusters -----------------------------------------------------------------------------


def test_authz_cluster_is_http2_round_robin_over_every_endpoint() -> None:
    layout = replace(
        LAYOUT, authz=tuple(AuthzEndpoint("127.0.0.1", port) for port in (9001, 9002, 9003))
    )
    authz = clusters(render_envoy_config(layout))["authz"]
    assert authz["lb_policy"] == "ROUND_ROBIN"
    assert authz["type"] == "STATIC"
    assert endpoints(authz) == [("127.0.0.1", 9001), ("127.0.0.1", 9002), ("127.0.0.1", 9003)]
    options = authz["typed_extension_protocol_options"]
    (protocol,) = options.values()
    assert "http2_protocol_options" in protocol["explicit_http_config"]
    assert "transport_socket" not in authz


def test_authz_stream_limit_is_passed_to_http2() -> None:
    config = render_envoy_config(replace(LAYOUT, authz_max_concurrent_streams=8))
    (protocol,) = clusters(config)["authz"]["typed_extension_protocol_options"].values()
    assert protocol["explicit_http_config"]["http2_protocol_options"]["max_concurrent_streams"] == 8


def test_backend_clusters_use_dns_only_for_names() -> None:
    found = clusters(render_envoy_config(LAYOUT))
    assert found["upstream_fininfo"]["type"] == "STATIC"
    assert found["upstream_helper"]["type"] == "STRICT_DNS"
    assert found["upstream_helper"]["dns_lookup_family"] == "V4_PREFERRED"
    assert endpoints(found["upstream_helper"]) == [("helper.internal", 9103)]
    # HTTP/1.1 unless asked otherwise
    assert "typed_extension_protocol_options" not in found["upstream_fininfo"]


def test_backend_can_speak_h2c() -> None:
    layout = replace(
        LAYOUT, upstreams=(UpstreamRoute("grpc", "/grpc/", "127.0.0.1", 9200, backend_http2=True),)
    )
    cluster = clusters(render_envoy_config(layout))["upstream_grpc"]
    (protocol,) = cluster["typed_extension_protocol_options"].values()
    assert protocol["explicit_http_config"] == {"http2_protocol_options": {}}


def test_authz_mtls_verifies_the_policy_service() -> None:
    layout = replace(
        LAYOUT,
        authz_tls=True,
        authz_ca_file="/pki/ca.crt",
        authz_cert_file="/pki/envoy.crt",
        authz_key_file="/pki/envoy.key",
        authz_sni="policy.internal",
    )
    socket = clusters(render_envoy_config(layout))["authz"]["transport_socket"]["typed_config"]
    assert socket["@type"].endswith("UpstreamTlsContext")
    assert socket["sni"] == "policy.internal"
    common = socket["common_tls_context"]
    assert common["validation_context"] == {"trusted_ca": {"filename": "/pki/ca.crt"}}
    assert common["alpn_protocols"] == ["h2"]
    assert common["tls_certificates"][0]["private_key"] == {"filename": "/pki/envoy.key"}


# -- tracing ------------------------------------------------------------------------------


def test_without_a_collector_nothing_is_traced() -> None:
    config = render_envoy_config(LAYOUT)
    assert all("tracing" not in hcm(listener) for listener in listeners(config).values())
    assert "otel_collector" not in clusters(config)
    assert "layered_runtime" not in config
    assert "trace_id" not in access_log_fields(config)


def test_collector_turns_on_the_opentelemetry_tracer_on_both_listeners() -> None:
    config = render_envoy_config(replace(TRACED, trace_sampling_percent=12.5))
    found = listeners(config)
    tracing = hcm(found["plain_http"])["tracing"]
    assert hcm(found["tls_https"])["tracing"] is tracing
    provider = tracing["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"] == {
        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
        "grpc_service": {"envoy_grpc": {"cluster_name": "otel_collector"}},
        "service_name": "envoy",
    }
    assert tracing["random_sampling"] == {"value": 12.5}
    # A client's x-client-trace-id must not force a trace past the sampling percentage.
    assert tracing["client_sampling"] == {"value": 0}
    assert "spawn_upstream_span" not in tracing


def test_collector_cluster_is_http2_and_uses_dns_only_for_names() -> None:
    by_address = clusters(render_envoy_config(TRACED))["otel_collector"]
    named_layout = replace(TRACED, otlp_collector=OtlpCollector("jaeger", 4317))
    by_name = clusters(render_envoy_config(named_layout))["otel_collector"]
    assert by_address["type"] == "STATIC"
    assert endpoints(by_address) == [("127.0.0.1", 4317)]
    (protocol,) = by_address["typed_extension_protocol_options"].values()
    assert protocol["explicit_http_config"] == {"http2_protocol_options": {}}
    assert "transport_socket" not in by_address
    assert by_name["type"] == "STRICT_DNS"
    assert by_name["dns_lookup_family"] == "V4_PREFERRED"
    assert endpoints(by_name) == [("jaeger", 4317)]


@pytest.mark.parametrize(("host", "sni"), [("otel.example", "otel.example"), ("10.0.0.5", None)])
def test_https_collector_speaks_tls_checked_against_the_system_roots(
    host: str, sni: str | None
) -> None:
    layout = replace(TRACED, otlp_collector=OtlpCollector(host, 4317, tls=True))
    socket = clusters(render_envoy_config(layout))["otel_collector"]["transport_socket"]
    context = socket["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext")
    assert context.get("sni") == sni
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["validation_context"] == {"system_root_certs": {}}


def test_runtime_makes_the_tracer_flush_each_span() -> None:
    config = render_envoy_config(replace(TRACED, trace_flush_interval_ms=250))
    (layer,) = config["layered_runtime"]["layers"]
    assert layer["static_layer"] == {
        "tracing.opentelemetry.flush_interval_ms": 250,
        "tracing.opentelemetry.min_flush_spans": 1,
    }


def test_access_log_carries_the_trace_id_when_tracing() -> None:
    fields = access_log_fields(render_envoy_config(TRACED))
    assert fields["trace_id"] == "%TRACE_ID%"
    assert fields["request_id"] == "%REQ(X-REQUEST-ID)%"


@pytest.mark.parametrize(
    ("endpoint", "collector"),
    [
        ("http://collector:4317", OtlpCollector("collector", 4317)),
        ("https://otel.example:4317", OtlpCollector("otel.example", 4317, tls=True)),
        ("collector:4317", OtlpCollector("collector", 4317)),
        ("127.0.0.1:4317", OtlpCollector("127.0.0.1", 4317)),
        ("http://127.0.0.1:4317/", OtlpCollector("127.0.0.1", 4317)),
        ("http://[::1]:4317", OtlpCollector("::1", 4317)),
        (" localhost:4317\n", OtlpCollector("localhost", 4317)),
    ],
)
def test_otlp_endpoints_in_the_forms_users_write(endpoint: str, collector: OtlpCollector) -> None:
    assert otlp_collector_from_endpoint(endpoint) == collector


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("grpc://collector:4317", "scheme 'grpc' is not http or https"),
        ("unix:///run/otel.sock", "scheme 'unix' is not http or https"),
        ("http://user:secret@collector:4317", "credentials, query and fragment are not allowed"),
        ("http://collector:4317?x=1", "credentials, query and fragment are not allowed"),
        ("http://collector:4318/v1/traces", "OTLP/gRPC takes no path"),
        ("", "a host is required"),
        ("http://:4317", "a host is required"),
        ("collector", "a port is required (OTLP/gRPC is usually 4317)"),
        ("https://otel.example", "a port is required (OTLP/gRPC is usually 4317)"),
        ("collector:otlp", "the port must be a number in 1..65535"),
        ("collector:70000", "the port must be a number in 1..65535"),
        ("collector:0", "the port must be a number in 1..65535"),
    ],
)
def test_other_otlp_endpoints_are_refused(endpoint: str, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        otlp_collector_from_endpoint(endpoint)
    assert str(refused.value) == (
        f"OTLP endpoint {endpoint!r}: {reason}; "
        "use http://HOST:PORT, https://HOST:PORT or HOST:PORT"
    )


# -- layout mistakes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"authz": ()}, "at least one authz endpoint"),
        ({"plain_port": None, "tls_port": None}, "set plain_port, tls_port or both"),
        ({"tls_cert_file": None}, "tls_port needs tls_cert_file and tls_key_file"),
        ({"max_request_bytes": 0}, "max_request_bytes must be positive"),
        ({"authz_timeout_seconds": 0}, "authz_timeout_seconds must be positive"),
        ({"authz_tls": True}, "authz_tls needs authz_ca_file"),
        ({"authz_cert_file": "/x.crt"}, "set both authz_cert_file and authz_key_file"),
        ({"trace_sampling_percent": 100.5}, "trace_sampling_percent must be 0..100"),
        ({"trace_sampling_percent": -1.0}, "trace_sampling_percent must be 0..100"),
        ({"trace_sampling_percent": float("nan")}, "trace_sampling_percent must be 0..100"),
        ({"trace_flush_interval_ms": 0}, "trace_flush_interval_ms must be positive"),
        ({"otlp_collector": OtlpCollector("", 4317)}, "otlp_collector needs a host and a port"),
        ({"otlp_collector": OtlpCollector("h", 0)}, "otlp_collector needs a host and a port"),
    ],
)
def test_inconsistent_layouts_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render_envoy_config(replace(LAYOUT, **changes))


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        (UpstreamRoute("fininfo", "/fininfo", "h", 1), "path_prefix must look like '/name/'"),
        (UpstreamRoute("root", "/", "h", 1), "path_prefix must look like '/name/'"),
        (UpstreamRoute("Bad Name", "/x/", "h", 1), "name must match"),
        (UpstreamRoute("x", "/x/", "h", 1, protocol="grpc"), "protocol must be one of"),
        (UpstreamRoute("x", "/x/", "h", 1, rewrite_prefix="y"), "rewrite_prefix must start"),
        (UpstreamRoute("x", "/x/", "h", 70000), "backend_port must be 0..65535"),
    ],
)
def test_bad_upstreams_are_refused(upstream: UpstreamRoute, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render_envoy_config(replace(LAYOUT, upstreams=(upstream,)))


def test_duplicate_upstreams_are_refused() -> None:
    twice_named = (
        UpstreamRoute("a", "/a/", "h", 1),
        UpstreamRoute("a", "/b/", "h", 1),
    )
    twice_routed = (
        UpstreamRoute("a", "/a/", "h", 1),
        UpstreamRoute("b", "/a/", "h", 1),
    )
    with pytest.raises(ConfigError, match="name 'a' is used twice"):
        render_envoy_config(replace(LAYOUT, upstreams=twice_named))
    with pytest.raises(ConfigError, match="path_prefix '/a/' is used twice"):
        render_envoy_config(replace(LAYOUT, upstreams=twice_routed))


# -- YAML ---------------------------------------------------------------------------------


def test_yaml_writes_shared_parts_once_and_loads_back_equal() -> None:
    text = dump_envoy_yaml(LAYOUT)
    assert text.count("route_config: &route_config") == 1
    assert text.count("route_config: *route_config") == 1
    assert yaml.safe_load(text) == render_envoy_config(LAYOUT)
    traced = dump_envoy_yaml(TRACED)
    assert traced.count("tracing: &tracing") == 1
    assert traced.count("tracing: *tracing") == 1


# -- benchmark baselines ------------------------------------------------------------------


def test_native_baseline_requires_a_jwt_and_rate_limits_without_tripping() -> None:
    config = render_native_baseline_config(
        8081, 9902, '{"keys":[]}', "https://issuer.example", "bench-audience"
    )
    jwt = http_filter(config, "envoy.filters.http.jwt_authn")
    (provider,) = jwt["providers"].values()
    assert provider["issuer"] == "https://issuer.example"
    assert provider["audiences"] == ["bench-audience"]
    assert provider["local_jwks"] == {"inline_string": '{"keys":[]}'}
    assert jwt["rules"] == [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]
    bucket = http_filter(config, "envoy.filters.http.local_ratelimit")["token_bucket"]
    assert bucket["max_tokens"] >= 1_000_000
    assert bucket["tokens_per_fill"] == bucket["max_tokens"]
    names = [f["name"] for f in first_hcm(config)["http_filters"]]
    assert names[-1] == "envoy.filters.http.router"
    assert [r["direct_response"]["status"] for r in routes(config)] == [200]
    assert config["static_resources"]["clusters"] == []


def test_bare_baseline_reads_the_whole_request_then_answers_directly() -> None:
    config = render_bare_baseline_config(8082, 9903, body="hi")
    # The buffer filter keeps POST connections alive (see _read_whole_request).
    assert [f["name"] for f in first_hcm(config)["http_filters"]] == [
        "envoy.filters.http.buffer",
        "envoy.filters.http.router",
    ]
    assert routes(config)[0]["direct_response"] == {"status": 200, "body": {"inline_string": "hi"}}


# -- certificates -------------------------------------------------------------------------


def test_self_signed_certificate_names_every_host_and_hides_its_key(tmp_path: Path) -> None:
    cert_path, key_path = generate_self_signed(
        tmp_path / "certs", ("localhost", "127.0.0.1", "::1")
    )
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=8)
    key = load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert cert.public_key() == key.public_key()


def test_regenerating_replaces_the_pair(tmp_path: Path) -> None:
    first_cert, key_path = generate_self_signed(tmp_path)
    first = first_cert.read_bytes()
    second_cert, _ = generate_self_signed(tmp_path)
    assert second_cert.read_bytes() != first
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_without_the_response_side_the_gateway_is_ext_authz_alone() -> None:
    config = render_envoy_config(replace(LAYOUT, response_side=False))
    filters = first_hcm(config)["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]
    assert "ext_proc" not in json.dumps(config)


def test_a_canned_answer_can_say_it_is_json() -> None:
    layout = replace(
        LAYOUT,
        upstreams=(
            UpstreamRoute(
                "bench",
                "/bench/",
                "",
                0,
                direct_response_body="{}",
                direct_response_content_type="application/json",
            ),
        ),
    )
    by_name = {r["name"]: r for r in routes(render_envoy_config(layout))}
    (added,) = by_name["bench"]["response_headers_to_add"]
    assert added["header"] == {"key": "content-type", "value": "application/json"}
