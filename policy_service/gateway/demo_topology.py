"""The demo topology, defined once: the three upstreams the demo gateway routes to.

Two MCP servers (fininfo, currenttime) and one A2A agent (helper), each served by a demo
peer (``policy_service.dev.peers``) on a default port. The reference config
(``envoy_config.reference_layout``), the dev stack (its Envoy layout, bundle, issuer audiences
and peer ports), the end-to-end tests' stack and bundle are all derived from
``DEMO_UPSTREAMS``; ``deploy/bundle.yaml`` is written by hand for operators to edit, and a
test holds it to this table.

It lives in ``gateway`` (not ``dev``) because the checked-in reference config is rendered
here and ``gateway`` may not import the layers above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from policy_service.gateway.layout import UpstreamRoute


@dataclass(frozen=True)
class DemoUpstream:
    """One demo upstream: its route, the peer behind it, and its URLs through a gateway."""

    name: str  # the route's, the context extension's and the bundle's upstream name
    path_prefix: str
    protocol: str  # mcp | a2a
    peer: str  # the demo peer behind it, as policy_service.dev.peers names it
    port: int  # the peer's default port
    # Where clients call it, under path_prefix: MCP_ENDPOINT for the MCP servers, the root
    # for the agent (its card is at .well-known/agent-card.json below that).
    endpoint: str

    def route(self, port: int | None = None, host: str = "127.0.0.1") -> UpstreamRoute:
        """The Envoy route to this upstream's peer at ``host:port`` (default: its own port)."""
        backend_port = self.port if port is None else port
        return UpstreamRoute(
            self.name, self.path_prefix, host, backend_port, protocol=self.protocol
        )

    def url(self, gateway: str) -> str:
        """Where a client calls it through the gateway at ``gateway``."""
        return f"{gateway}{self.path_prefix}{self.endpoint}"

    def resource(self, gateway: str) -> str:
        """Its protected-resource URI: the bundle's ``resource`` and a token's audience.

        No trailing slash: RFC 9728 puts the metadata document at the well-known prefix plus
        the resource's path, so the agent's is ``.../oauth-protected-resource/agents/helper``.
        """
        return self.url(gateway).rstrip("/")

    def bundle_entry(self, gateway: str, backend: str) -> str:
        """The upstream's first lines in a bundle's ``upstreams:`` list, indented as there.

        Only what the topology fixes; the policy (rules, scopes, denial style) differs from
        one bundle to the next and follows these lines.
        """
        return (
            f"  - name: {self.name}\n"
            f"    path_prefix: {self.path_prefix}\n"
            f"    protocol: {self.protocol}\n"
            f"    resource: {self.resource(gateway)}\n"
            f"    backend: {backend}\n"
        )


# The path the demo MCP servers serve MCP on, below their root (and below the route's prefix).
MCP_ENDPOINT: Final = "mcp"

FININFO: Final = DemoUpstream("fininfo", "/fininfo/", "mcp", "fininfo", 9101, MCP_ENDPOINT)
CURRENTTIME: Final = DemoUpstream(
    "currenttime", "/currenttime/", "mcp", "currenttime", 9102, MCP_ENDPOINT
)
HELPER: Final = DemoUpstream("helper", "/agents/helper/", "a2a", "agent", 9103, "")

DEMO_UPSTREAMS: Final[tuple[DemoUpstream, ...]] = (FININFO, CURRENTTIME, HELPER)


def default_peer_ports() -> dict[str, int]:
    """Each demo peer's default port, by peer name."""
    return {upstream.peer: upstream.port for upstream in DEMO_UPSTREAMS}


def demo_routes(
    peer_ports: Mapping[str, int] | None = None, host: str = "127.0.0.1"
) -> tuple[UpstreamRoute, ...]:
    """The routes to the demo peers at ``host``, on ``peer_ports`` (by peer name) or their
    default ports."""
    ports = default_peer_ports() if peer_ports is None else peer_ports
    return tuple(upstream.route(ports[upstream.peer], host) for upstream in DEMO_UPSTREAMS)
