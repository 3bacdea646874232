"""The gateway's route config: one route per upstream, longest prefix first, then a catch-all."""

from __future__ import annotations

from collections.abc import Sequence

from policy_service.gateway.filters import EXT_AUTHZ_FILTER
from policy_service.gateway.layout import TYPE_URL, Config, UpstreamRoute

CATCH_ALL_ROUTE = "catch_all"


def route_config(upstreams: Sequence[UpstreamRoute]) -> Config:
    # Longest prefix first, so "/agents/helper/" is never shadowed by "/agents/".
    ordered = sorted(upstreams, key=lambda u: len(u.path_prefix), reverse=True)
    routes = [_upstream_route(u) for u in ordered]
    routes.append(_catch_all_route())
    config: Config = {
        "name": "gateway",
        "virtual_hosts": [{"name": "gateway", "domains": ["*"], "routes": routes}],
    }
    canned = max((len(u.direct_response_body or "") for u in upstreams), default=0)
    if canned > 4096:  # Envoy's default limit for a direct response body
        config["max_direct_response_body_size_bytes"] = canned
    return config


def _upstream_route(upstream: UpstreamRoute) -> Config:
    route: Config = {"name": upstream.name, "match": {"prefix": upstream.path_prefix}}
    if upstream.is_direct_response:
        body = upstream.direct_response_body if upstream.direct_response_body is not None else ""
        route["direct_response"] = {"status": 200, "body": {"inline_string": body}}
        if upstream.direct_response_content_type is not None:
            route["response_headers_to_add"] = [
                {
                    "header": {
                        "key": "content-type",
                        "value": upstream.direct_response_content_type,
                    },
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ]
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
            "@type": TYPE_URL + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
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
