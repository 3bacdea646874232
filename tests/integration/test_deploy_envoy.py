"""deploy/ for real, without Docker: Envoy, the service, the peers, Redis, the README's curl.

What Docker adds on top (image build, service-name DNS, published ports) cannot be run here;
everything else runs as compose.yaml says: the service with compose's command and
environment, the demo peers with compose's command, a real redis-server behind
POLICY_SERVICE_REDIS_URL, and a real Envoy with deploy/envoy.yaml. Names and ports are
mapped to free loopback ports first (several test runs share a machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from policy_service.cli.flags import REDIS_URL_ENV_VAR
from policy_service.dev.redis_server import RedisServer
from policy_service.gateway.demo_topology import DEMO_UPSTREAMS, HELPER
from tests.support.envoy import EnvoyProcess, find_envoy_binary, free_port, validate_config
from tests.support.peers import GatewayDenied, a2a_send_message, mcp_call_tool, tool_text

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ENVOY_YAML = DEPLOY / "envoy.yaml"
README = DEPLOY / "README.md"
COMPOSE_GATEWAY = "http://localhost:8080"
READY_SECONDS = 60.0

pytestmark = pytest.mark.e2e

QUOTE = {"symbol": "ACME"}
TRADE = {"symbol": "ACME", "side": "buy", "quantity": 1}


def compose_service(name: str) -> dict[str, Any]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    service: dict[str, Any] = compose["services"][name]
    return service


# -- the config alone -------------------------------------------------------------------------


def test_deploy_envoy_config_validates_as_checked_in() -> None:
    # Validate mode does not resolve names (STRICT_DNS clusters resolve once Envoy runs), so
    # the compose service names need not resolve here: the file is validated unchanged.
    validate_config(ENVOY_YAML)


def test_compose_runs_the_envoy_version_the_config_is_validated_with() -> None:
    result = subprocess.run(
        [find_envoy_binary(), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    binary = re.search(r"/(\d+\.\d+)\.\d+/", result.stdout)
    image = re.fullmatch(r"envoyproxy/envoy:v(\d+\.\d+)[.-].*", compose_service("envoy")["image"])
    assert binary, result.stdout
    assert image, compose_service("envoy")["image"]
    assert image.group(1) == binary.group(1)


# -- the whole stack ------------------------------------------------------------------------


@dataclass
class DeployStack:
    url: str
    authz_port: int
    metrics_port: int
    service: subprocess.Popen[bytes]
    audit_log: Path
    service_log: Path
    envoy: EnvoyProcess
    redis_url: str


def remap(argv: list[str], mapping: dict[str, str]) -> list[str]:
    return [mapping.get(arg, arg) for arg in argv]


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    pytest.fail(f"port {port} never opened (exit {process.poll()}):\n{log.read_text()}")


def wait_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.05)
    pytest.fail(f"the service never served (exit {process.poll()}):\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def envoy_config_on_loopback(ports: dict[tuple[str, int], int], http_port: int) -> dict[str, Any]:
    """deploy/envoy.yaml with each compose name:port mapped to a loopback port."""
    config: dict[str, Any] = yaml.safe_load(ENVOY_YAML.read_text(encoding="utf-8"))
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                key = (address["address"], address["port_value"])
                assert key in ports, f"deploy/envoy.yaml names {key}, unknown to this test"
                address.update(address="127.0.0.1", port_value=ports[key])
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=http_port)
    config["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    return config


def start_service(
    logs: Path, authz: int, metrics: int, redis_url: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """The service, with compose's command and environment, serving on loopback.

    The bundle is the file compose mounts; Redis is a real server; spans go nowhere (no
    collector here). Returns the process, its audit log and its own log.
    """
    policy = compose_service("policy-service")
    command = remap(
        policy["command"],
        {
            "/etc/policy-service/bundle.yaml": str(DEPLOY / "bundle.yaml"),
            "0.0.0.0:9001": f"127.0.0.1:{authz}",
            "0.0.0.0:9464": f"127.0.0.1:{metrics}",
        },
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environment.update(
        {k: v for k, v in policy["environment"].items() if not k.startswith("OTEL_")}
    )
    environment[REDIS_URL_ENV_VAR] = redis_url
    environment["PYTHONUNBUFFERED"] = "1"
    audit_log, service_log = logs / "audit.jsonl", logs / "service.log"
    with audit_log.open("wb") as out, service_log.open("wb") as err:
        service = subprocess.Popen(
            [sys.executable, "-m", "policy_service", *command],
            stdout=out,
            stderr=err,
            env=environment,
        )
    try:
        wait_serving(authz, service, service_log)
    except BaseException:
        stop(service)
        raise
    return service, audit_log, service_log


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[DeployStack]:
    logs = tmp_path_factory.mktemp("deploy-stack")
    http, authz, metrics = free_port(), free_port(), free_port()
    peer_ports = {u.peer: free_port() for u in DEMO_UPSTREAMS}
    url = f"http://127.0.0.1:{http}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # The demo peers, as compose runs them, on loopback and free ports.
        peers = compose_service("demo-peers")
        command = remap(
            [*peers["entrypoint"], *peers["command"]],
            {
                "python": sys.executable,
                "0.0.0.0": "127.0.0.1",
                HELPER.url(COMPOSE_GATEWAY): HELPER.url(url),
            },
        )
        for name, port in peer_ports.items():
            command += [f"--{name}-port", str(port)]
        peers_log = logs / "peers.log"
        with peers_log.open("wb") as out:
            processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
        for port in peer_ports.values():
            wait_for_port(port, processes[-1], peers_log)

        service, audit_log, service_log = start_service(logs, authz, metrics, redis_server.url)
        processes.append(service)

        config = envoy_config_on_loopback(
            {
                ("policy-service", 9001): authz,
                **{("demo-peers", u.port): peer_ports[u.peer] for u in DEMO_UPSTREAMS},
                ("jaeger", 4317): free_port(),  # nothing listens: spans are best effort
            },
            http,
        )
        with EnvoyProcess(config) as envoy:
            yield DeployStack(
                url, authz, metrics, service, audit_log, service_log, envoy, redis_server.url
            )
    finally:
        for process in reversed(processes):
            stop(process)


def readme_curl() -> str:
    readme = README.read_text(encoding="utf-8")
    start = readme.index("curl -s ")
    return readme[start : readme.index("```", start)].strip()


def test_the_readme_curl_gets_a_quote_with_the_demo_key(stack: DeployStack) -> None:
    command = readme_curl().replace(COMPOSE_GATEWAY, stack.url)
    assert stack.url in command
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True
    )
    assert '"symbol":"ACME"' in result.stdout, result.stdout + result.stderr
    assert '"isError":false' in result.stdout


async def test_the_demo_key_reaches_every_upstream_and_nothing_more(stack: DeployStack) -> None:
    key = re.search(r"x-api-key: ([^'\s]+)", readme_curl())
    assert key
    keyed = {"x-api-key": key.group(1)}
    fininfo = f"{stack.url}/fininfo/mcp"
    assert "ACME" in tool_text(await mcp_call_tool(fininfo, "get_quote", QUOTE, headers=keyed))
    clock = await mcp_call_tool(f"{stack.url}/currenttime/mcp", "current_time", {}, headers=keyed)
    assert tool_text(clock)
    assert "hi" in await a2a_send_message(f"{stack.url}/agents/helper/", "hi", headers=keyed)
    with pytest.raises(GatewayDenied) as trade:
        await mcp_call_tool(fininfo, "place_trade", TRADE, headers=keyed)
    assert trade.value.status == 403
    assert 'error="insufficient_scope"' in trade.value.headers["www-authenticate"]
    with pytest.raises(GatewayDenied) as anonymous:
        await mcp_call_tool(fininfo, "get_quote", QUOTE, headers={})
    assert anonymous.value.status == 401


def test_decisions_reach_the_audit_log_metrics_and_redis(stack: DeployStack) -> None:
    # Its own allowed and denied calls: the test must not count on what others left behind.
    allowed = subprocess.run(
        [
            "bash",
            "-c",
            readme_curl().replace(COMPOSE_GATEWAY, stack.url).replace("curl -s", "curl -si", 1),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    allowed_id = re.search(r"(?im)^x-decision-id: ([0-9a-f]{32})", allowed)
    assert allowed_id, allowed
    with httpx.Client(trust_env=False, timeout=10) as http:
        denied = http.post(
            f"{stack.url}/fininfo/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "ping"}
        )
        assert denied.status_code == 401
        metrics = http.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
    assert "policy_service_checks_total" in metrics

    events = {
        event["decision_id"]: event
        for event in map(json.loads, stack.audit_log.read_text().splitlines())
    }
    assert events[allowed_id.group(1)]["decision"] == "allow", stack.service_log.read_text()
    assert events[denied.headers["x-decision-id"]]["decision"] == "deny"

    # The per-client limit's buckets live in the Redis named by POLICY_SERVICE_REDIS_URL.
    with redis.Redis.from_url(stack.redis_url, decode_responses=True) as client:
        assert any(key.startswith("{policy-service}") for key in client.scan_iter())

    # What Prometheus scrapes from Envoy (compose: envoy:9901/stats/prometheus).
    stats = stack.envoy.admin_get("/stats/prometheus").splitlines()
    denials = [line for line in stats if line.startswith("envoy_http_ext_authz_denied{")]
    assert denials
    assert sum(float(line.rsplit(" ", 1)[1]) for line in denials) >= 1


def test_the_compose_health_check_passes_and_can_fail(stack: DeployStack) -> None:
    script = compose_service("policy-service")["healthcheck"]["test"][-1]

    def run(port: int) -> int:
        probe = script.replace("127.0.0.1:9001", f"127.0.0.1:{port}")
        assert probe != script
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30)
        return result.returncode

    assert run(stack.authz_port) == 0
    assert run(free_port()) != 0


def test_sigterm_drains_within_composes_stop_grace_period(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # A service of its own: stopping the shared one would leave the other tests nothing.
    grace = int(compose_service("policy-service")["stop_grace_period"].rstrip("s"))
    service, _, service_log = start_service(tmp_path, free_port(), free_port(), redis_server.url)
    try:
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=grace) == 0
    finally:
        stop(service)
    assert "stopped" in service_log.read_text()
