"""The gateway's HTTP filters: ext_authz (fail closed, with the body), ext_proc (the
response side, for the answers the check left a plan for) and the router."""

from __future__ import annotations

from policy_service.gateway.clusters import AUTHZ_CLUSTER
from policy_service.gateway.layout import TYPE_URL, Config, EnvoyLayout

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
# The key of the ext_authz dynamic metadata under which an allow leaves the plan for its
# answer (the policy service's responses.plan.PLAN_METADATA_KEY; a test holds them equal).
RESPONSE_PLAN_KEY = "response_plan"
ROUTER_FILTER = "envoy.filters.http.router"


def ext_authz_filter(layout: EnvoyLayout) -> Config:
    return {
        "name": EXT_AUTHZ_FILTER,
        "typed_config": {
            "@type": TYPE_URL + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": AUTHZ_CLUSTER},
                "timeout": duration(layout.authz_timeout_seconds),
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


def ext_proc_filter(layout: EnvoyLayout) -> Config:
    """The response side: the same policy service, as an ext_proc server, for the answers
    of requests the check marked. The filter is wrapped in a matcher that skips it unless
    the request carries the mark (``RESPONSE_MARK_HEADER``, set by the check and read
    after it): an answer that needs nothing opens no stream, and neither do the replies
    Envoy makes itself before any check (a 408 for slow headers, a path redirect)."""
    processor = {
        "@type": TYPE_URL + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": AUTHZ_CLUSTER}},
        # Fail closed: an answer the service can't see is not passed unchecked.
        "failure_mode_allow": False,
        "processing_mode": {
            "request_header_mode": "SKIP",
            "response_header_mode": "SEND",
            # Chunk by chunk: SSE events go out as they complete, never held whole.
            "response_body_mode": "STREAMED",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
        # The service skips the body of answers it only needs the headers of.
        "allow_mode_override": True,
        # The check's plan for the answer travels in the ext_authz filter's metadata.
        "metadata_options": {"forwarding_namespaces": {"untyped": [EXT_AUTHZ_FILTER]}},
        "message_timeout": duration(layout.answer_timeout_seconds),
        "stat_prefix": "answers",
    }
    unmarked = {
        "single_predicate": {
            "input": {
                "name": "envoy.matching.inputs.dynamic_metadata",
                "typed_config": {
                    "@type": TYPE_URL
                    + "envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput",
                    "filter": EXT_AUTHZ_FILTER,
                    "path": [{"key": RESPONSE_PLAN_KEY}],
                },
            },
            "custom_match": {
                "name": "envoy.matching.matchers.metadata_matcher",
                "typed_config": {
                    "@type": TYPE_URL
                    + "envoy.extensions.matching.input_matchers.metadata.v3.Metadata",
                    "value": {"present_match": True},
                    "invert": True,
                },
            },
        }
    }
    skip = {
        "action": {
            "name": "skip",
            "typed_config": {
                "@type": TYPE_URL + "envoy.extensions.filters.common.matcher.action.v3.SkipFilter"
            },
        }
    }
    return {
        "name": EXT_PROC_FILTER,
        "typed_config": {
            "@type": TYPE_URL + "envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            "xds_matcher": {
                "matcher_list": {"matchers": [{"predicate": unmarked, "on_match": skip}]}
            },
            "extension_config": {"name": EXT_PROC_FILTER, "typed_config": processor},
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
                    "@type": TYPE_URL
                    + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }


def router_filter() -> Config:
    return {
        "name": ROUTER_FILTER,
        "typed_config": {"@type": TYPE_URL + "envoy.extensions.filters.http.router.v3.Router"},
    }


def duration(seconds: float) -> str:
    """An Envoy Duration: exact to the nanosecond, no float noise (0.25 -> \"0.25s\")."""
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"
