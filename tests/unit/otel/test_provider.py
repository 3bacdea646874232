"""Tracing is configured by the standard OTEL_* variables, and is off without them."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from policy_service.errors import ConfigError
from policy_service.otel.provider import setup_tracing
from policy_service.otel.spans import link_to, parent_context


def test_nothing_configured_means_no_tracing() -> None:
    assert setup_tracing({}) is None
    assert setup_tracing({"OTEL_TRACES_EXPORTER": "none"}) is None


def test_the_sdk_switch_wins() -> None:
    environ = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    assert setup_tracing(environ) is None


def test_an_otlp_endpoint_turns_on_batched_otlp_export() -> None:
    provider = setup_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert provider is not None
    try:
        processors = provider._active_span_processor._span_processors
        assert [type(p) for p in processors] == [BatchSpanProcessor]
        assert provider.resource.attributes["service.name"] == "policy-service"
        # Sampling follows the parent unless OTEL_TRACES_SAMPLER says otherwise.
        assert "ParentBased" in provider.sampler.get_description()
    finally:
        provider.shutdown()


def test_the_service_name_comes_from_otel_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # Resource.create reads OTEL_SERVICE_NAME from the process environment itself.
    monkeypatch.setenv("OTEL_SERVICE_NAME", "authz-eu-1")
    provider = setup_tracing({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "x"})
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "authz-eu-1"
    provider.shutdown()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER: 'zipkin' is not one of otlp, console, none",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: only grpc is supported, not 'http/protobuf'",
        ),
    ],
)
def test_an_unusable_setting_is_refused_at_start(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        setup_tracing(environ)
    assert str(caught.value) == message


def test_parent_comes_from_metadata_then_headers() -> None:
    from opentelemetry import trace

    envoy = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    client = "00-11111111111111111111111111111111-2222222222222222-01"

    def span_id(context: object) -> str:
        return format(trace.get_current_span(context).get_span_context().span_id, "016x")  # type: ignore[arg-type]

    assert span_id(parent_context({"traceparent": envoy}, {"traceparent": client})) == (
        "00f067aa0ba902b7"
    )
    assert span_id(parent_context({}, {"traceparent": client})) == "2222222222222222"
    assert span_id(parent_context({"traceparent": "garbage"}, {"traceparent": client})) == (
        "2222222222222222"
    )
    assert not trace.get_current_span(parent_context({}, {})).get_span_context().is_valid


def test_only_a_valid_meta_traceparent_is_linked() -> None:
    link = link_to("00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01")
    assert link is not None
    assert format(link.context.span_id, "016x") == "bbbbbbbbbbbbbbbb"
    assert link_to(None) is None
    assert link_to("00-00000000000000000000000000000000-bbbbbbbbbbbbbbbb-01") is None
    assert link_to("not a traceparent") is None
