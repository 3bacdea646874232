"""The demo topology is defined once: everything that writes it out agrees with the table."""

from __future__ import annotations

from pathlib import Path

from policy_service.bundles.loader import load_bundle
from policy_service.dev.peers import DEFAULT_PORTS, PEER_NAMES
from policy_service.dev.stack import DevPorts, DevStack, dev_envoy_layout, write_dev_files
from policy_service.gateway.demo_topology import (
    DEMO_UPSTREAMS,
    FININFO,
    HELPER,
    default_peer_ports,
    demo_routes,
)
from policy_service.gateway.envoy_config import reference_layout, render_reference_yaml
from policy_service.gateway.layout import UpstreamRoute
from tests.support.bundles import write_test_bundle

GATEWAY = "http://127.0.0.1:8080"


def bundle_upstreams(path: Path) -> dict[str, tuple[str, str, str | None, str]]:
    return {
        u.name: (u.path_prefix, u.protocol.value, u.backend, u.resource)
        for u in load_bundle(path).upstreams
    }


def expected_upstreams(
    gateway: str, peer_ports: dict[str, int]
) -> dict[str, tuple[str, str, str | None, str]]:
    return {
        u.name: (
            u.path_prefix,
            u.protocol,
            f"http://127.0.0.1:{peer_ports[u.peer]}",
            u.resource(gateway),
        )
        for u in DEMO_UPSTREAMS
    }


def test_urls_and_resources_are_the_ones_clients_and_tokens_use() -> None:
    assert FININFO.url(GATEWAY) == "http://127.0.0.1:8080/fininfo/mcp"
    assert FININFO.resource(GATEWAY) == "http://127.0.0.1:8080/fininfo/mcp"
    assert HELPER.url(GATEWAY) == "http://127.0.0.1:8080/agents/helper/"
    assert HELPER.resource(GATEWAY) == "http://127.0.0.1:8080/agents/helper"


def test_routes_go_to_each_peer_on_its_port() -> None:
    assert demo_routes({"fininfo": 1, "currenttime": 2, "agent": 3}, "peers.internal") == (
        UpstreamRoute("fininfo", "/fininfo/", "peers.internal", 1),
        UpstreamRoute("currenttime", "/currenttime/", "peers.internal", 2),
        UpstreamRoute("helper", "/agents/helper/", "peers.internal", 3, protocol="a2a"),
    )
    assert demo_routes() == demo_routes(default_peer_ports())


def test_the_reference_config_routes_to_the_demo_peers() -> None:
    assert reference_layout().upstreams == demo_routes()
    # The header's prose names the upstreams too: it must not fall behind the table.
    header = render_reference_yaml().split("\n\n", 1)[0]
    for upstream in DEMO_UPSTREAMS:
        assert upstream.path_prefix in header


def test_the_demo_peers_are_the_topologys() -> None:
    assert tuple(u.peer for u in DEMO_UPSTREAMS) == PEER_NAMES
    assert dict(DEFAULT_PORTS) == default_peer_ports()
    assert DevPorts().peer_ports() == default_peer_ports()


def test_the_dev_stack_writes_the_topology(tmp_path: Path) -> None:
    ports = DevPorts(http=18080, fininfo=19101, currenttime=19102, agent=19103)
    gateway = f"http://127.0.0.1:{ports.http}"
    issuer, _api_key, bundle_path = write_dev_files(tmp_path, ports)
    assert bundle_upstreams(bundle_path) == expected_upstreams(gateway, ports.peer_ports())
    assert issuer.audience_for("helper") == HELPER.resource(gateway)
    layout = dev_envoy_layout(tmp_path, ports)
    assert layout.upstreams == demo_routes(ports.peer_ports())
    instructions = DevStack(tmp_path, ports).instructions()
    for upstream in DEMO_UPSTREAMS:
        assert upstream.url(gateway) in instructions


def test_the_test_bundle_writes_the_topology(tmp_path: Path) -> None:
    peer_ports = {"fininfo": 1, "currenttime": 2, "agent": 3}
    bundle = write_test_bundle(tmp_path, gateway=GATEWAY, peer_ports=peer_ports)
    assert bundle_upstreams(bundle.path) == expected_upstreams(GATEWAY, peer_ports)
