"""The deployment files (deploy/) agree with each other and with the service's own flags.

Nothing here needs Docker, kubectl or a network: the files are read as YAML and the
commands they run are parsed with the service's own argument parser. deploy/envoy.yaml and
deploy/k8s/configmap.yaml are written by ``python deploy/generate.py``; a test fails when
either is stale.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from policy_service.bundles.loader import load_bundle
from policy_service.cli.flags import REDIS_URL_ENV_VAR
from policy_service.cli.main import build_parser
from policy_service.dev.peers import DEFAULT_PORTS
from policy_service.gateway.clusters import AUTHZ_CLUSTER, OTEL_COLLECTOR_CLUSTER
from policy_service.gateway.demo_topology import DEMO_UPSTREAMS
from policy_service.identity.apikeys import hash_api_key
from policy_service.workers.supervisor import STOP_MARGIN_SECONDS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BUNDLE = DEPLOY / "bundle.yaml"
ENVOY_YAML = DEPLOY / "envoy.yaml"
CONFIGMAP = K8S / "configmap.yaml"
README = DEPLOY / "README.md"

ANY_ADDRESS = "0.0.0.0"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_generate", DEPLOY / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()


# -- helpers --------------------------------------------------------------------------------


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    document: dict[str, Any] = load(DEPLOY / "compose.yaml")
    return document


def service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services[name]


def envoy_config() -> dict[str, Any]:
    document: dict[str, Any] = load(ENVOY_YAML)
    return document


def cluster_endpoints(name: str) -> list[tuple[str, int]]:
    (cluster,) = [c for c in envoy_config()["static_resources"]["clusters"] if c["name"] == name]
    return [
        (lb["endpoint"]["address"]["socket_address"]["address"],
         lb["endpoint"]["address"]["socket_address"]["port_value"])
        for group in cluster["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]  # fmt: skip


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def published(service_name: str) -> dict[int, tuple[str, int]]:
    """Container port -> (host address, host port) for a compose service."""
    ports: dict[int, tuple[str, int]] = {}
    for entry in service(service_name).get("ports", []):
        host, host_port_text, container = str(entry).rsplit(":", 2)
        ports[int(container)] = (host, int(host_port_text))
    return ports


def prometheus_targets() -> dict[str, tuple[str, str]]:
    """Scrape target -> (job name, metrics path)."""
    targets: dict[str, tuple[str, str]] = {}
    for job in load(DEPLOY / "prometheus.yml")["scrape_configs"]:
        for group in job["static_configs"]:
            for target in group["targets"]:
                targets[target] = (job["job_name"], job.get("metrics_path", "/metrics"))
    return targets


def serve_args(argv: list[str]) -> Any:
    args = build_parser().parse_args(argv)
    assert args.command == "serve"
    return args


def k8s(name: str) -> dict[str, Any]:
    document: dict[str, Any] = load(K8S / name)
    return document


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = k8s("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    assert isinstance(only, dict)
    return only


def demo_key() -> str:
    match = re.search(r"x-api-key: ([^'\"\s]+)", README.read_text(encoding="utf-8"))
    assert match, "deploy/README.md shows no x-api-key example"
    return match.group(1)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


# -- every file -------------------------------------------------------------------------------

YAML_FILES = sorted([*DEPLOY.glob("*.yaml"), *DEPLOY.glob("*.yml"), *K8S.glob("*.yaml")])


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses_to_a_mapping(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert documents
    assert all(isinstance(document, dict) and document for document in documents)


def test_the_expected_files_are_there() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert names >= {
        "bundle.yaml",
        "compose.yaml",
        "envoy.yaml",
        "prometheus.yml",
        "k8s/configmap.yaml",
        "k8s/deployment.yaml",
        "k8s/service.yaml",
        "k8s/pdb.yaml",
        "k8s/kustomization.yaml",
    }


def test_no_file_names_a_path_on_some_machine() -> None:
    for path in [*YAML_FILES, DEPLOY / "Dockerfile", README]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"/(home|Users|work|tmp/pytest)/", text), path


# -- the bundle -----------------------------------------------------------------------------


def test_bundle_lints_with_the_three_demo_upstreams() -> None:
    bundle = load_bundle(BUNDLE)
    upstreams = {
        u.name: (u.path_prefix, u.protocol.value, u.backend, u.resource) for u in bundle.upstreams
    }
    # The demo topology, with compose's host name for the peers and Envoy's published port.
    assert upstreams == {
        u.name: (
            u.path_prefix,
            u.protocol,
            f"http://demo-peers:{u.port}",
            u.resource("http://localhost:8080"),
        )
        for u in DEMO_UPSTREAMS
    }
    assert len(bundle.limits) >= 2


def test_bundle_keeps_tool_arguments_out_of_the_audit_trail_explicitly() -> None:
    raw = load(BUNDLE)
    assert raw["audit"]["include_arguments"] is False


def test_the_documented_demo_key_is_the_bundles_only_key() -> None:
    key = demo_key()
    raw = load(BUNDLE)
    assert [entry["sha256"] for entry in raw["api_keys"]] == [hash_api_key(key)]
    assert key not in str(raw)  # only in a comment, never as a value
    assert {"fininfo:read", "time:read", "agent:chat"} <= set(raw["api_keys"][0]["scopes"])
    assert "fininfo:trade" not in raw["api_keys"][0]["scopes"]  # the README's 403 example


def test_bundle_backends_are_the_demo_peers_ports() -> None:
    peers_by_upstream = {u.name: u.peer for u in DEMO_UPSTREAMS}
    for upstream in load_bundle(BUNDLE).upstreams:
        assert upstream.backend is not None
        backend = urlsplit(upstream.backend)
        assert backend.hostname in compose()["services"]
        assert backend.port == DEFAULT_PORTS[peers_by_upstream[upstream.name]]


# -- the Envoy config -------------------------------------------------------------------------


def test_generated_files_are_what_the_generator_writes() -> None:
    for path, text in GENERATOR.generated().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run python deploy/generate.py"
        )


def test_envoy_listens_on_every_address_inside_its_container() -> None:
    config = envoy_config()
    for listener in config["static_resources"]["listeners"]:
        assert listener["address"]["socket_address"]["address"] == ANY_ADDRESS
    assert config["admin"]["address"]["socket_address"]["address"] == ANY_ADDRESS


def test_envoy_authz_cluster_targets_the_compose_policy_service() -> None:
    args = serve_args(service("policy-service")["command"])
    (listen,) = args.listen
    assert cluster_endpoints(AUTHZ_CLUSTER) == [("policy-service", host_port(listen)[1])]


def test_envoy_sends_spans_where_the_policy_service_does() -> None:
    endpoint = urlsplit(service("policy-service")["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert cluster_endpoints(OTEL_COLLECTOR_CLUSTER) == [(endpoint.hostname, endpoint.port)]
    assert endpoint.hostname == "jaeger"
    assert endpoint.port == 4317


def test_envoy_listener_and_admin_are_published_and_scraped() -> None:
    config = envoy_config()
    (listener,) = config["static_resources"]["listeners"]
    http_port = listener["address"]["socket_address"]["port_value"]
    admin_port = config["admin"]["address"]["socket_address"]["port_value"]
    ports = published("envoy")
    assert ports[http_port] == ("127.0.0.1", 8080)
    assert ports[admin_port] == ("127.0.0.1", 9901)
    assert prometheus_targets()[f"envoy:{admin_port}"] == ("envoy", "/stats/prometheus")


def test_envoy_backends_are_the_bundles() -> None:
    for upstream in load_bundle(BUNDLE).upstreams:
        assert upstream.backend is not None
        backend = urlsplit(upstream.backend)
        endpoints = cluster_endpoints(f"upstream_{upstream.name}")
        assert endpoints == [(backend.hostname, backend.port)]


# -- compose -------------------------------------------------------------------------------


def test_compose_has_every_service_with_a_pinned_image() -> None:
    services = compose()["services"]
    assert set(services) == {
        "envoy",
        "policy-service",
        "redis",
        "jaeger",
        "prometheus",
        "demo-peers",
    }
    images = {name: s["image"] for name, s in services.items()}
    assert images["envoy"].startswith("envoyproxy/envoy:v1.")
    assert images["redis"].startswith("redis:7")
    assert images["jaeger"].startswith("jaegertracing/all-in-one:")
    assert images["prometheus"].startswith("prom/prometheus:v")
    assert all(":" in image and not image.endswith(":latest") for image in images.values())


def test_compose_builds_the_service_image_from_the_repository_root() -> None:
    for name in ("policy-service", "demo-peers"):
        build = service(name)["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert service("policy-service")["image"] == service("demo-peers")["image"]


def test_compose_mounts_the_deploy_files() -> None:
    def mounts(name: str) -> dict[str, Path]:
        pairs = (str(v).split(":")[:2] for v in service(name).get("volumes", []))
        return {target: (DEPLOY / source).resolve() for source, target in pairs}

    args = serve_args(service("policy-service")["command"])
    assert mounts("policy-service")[args.bundle] == BUNDLE
    envoy_command = service("envoy")["command"]
    config_path = envoy_command[envoy_command.index("-c") + 1]
    assert mounts("envoy")[config_path] == ENVOY_YAML
    assert mounts("prometheus")["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus.yml"


def test_compose_policy_service_command_parses_and_is_scraped() -> None:
    args = serve_args(service("policy-service")["command"])
    (listen,) = args.listen
    assert host_port(listen) == (ANY_ADDRESS, 9001)
    assert host_port(args.metrics_listen) == (ANY_ADDRESS, 9464)
    assert args.audit_log == "-"
    assert args.redis_url is None  # from the environment, not the process list
    assert prometheus_targets()[f"policy-service:{host_port(args.metrics_listen)[1]}"] == (
        "policy-service",
        "/metrics",
    )


def test_compose_policy_service_environment() -> None:
    environment = service("policy-service")["environment"]
    assert environment["OTEL_SERVICE_NAME"] == "policy-service"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    redis_url = urlsplit(environment[REDIS_URL_ENV_VAR])
    assert redis_url.scheme == "redis"
    assert redis_url.hostname == "redis"
    assert redis_url.port == 6379


def test_compose_health_check_asks_the_grpc_port() -> None:
    check = service("policy-service")["healthcheck"]["test"]
    (listen,) = serve_args(service("policy-service")["command"]).listen
    script = check[-1]
    assert check[:3] == ["CMD", "python", "-c"]
    assert f"'127.0.0.1:{host_port(listen)[1]}'" in script
    assert "HealthStub" in script
    compile(script, "healthcheck", "exec")  # a syntax error would mark it unhealthy forever


def test_compose_stops_the_service_after_its_grace_period() -> None:
    args = serve_args(service("policy-service")["command"])
    grace = service("policy-service")["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace)
    assert int(grace[:-1]) > args.grace + (STOP_MARGIN_SECONDS if args.workers > 1 else 0)


def test_compose_runs_several_workers_sharing_buckets_in_redis() -> None:
    args = serve_args(service("policy-service")["command"])
    assert args.workers > 1
    assert REDIS_URL_ENV_VAR in service("policy-service")["environment"]


def test_compose_envoy_waits_for_a_healthy_policy_service() -> None:
    depends = service("envoy")["depends_on"]
    assert depends["policy-service"]["condition"] == "service_healthy"
    assert service("policy-service")["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_demo_peers_run_the_peers_module_behind_the_gateway() -> None:
    peers = service("demo-peers")
    assert peers["entrypoint"] == ["python", "-m", "policy_service.dev.peers"]
    command = peers["command"]
    assert command[command.index("--host") + 1] == ANY_ADDRESS
    helper = next(u for u in load_bundle(BUNDLE).upstreams if u.name == "helper")
    gateway = "http://localhost:{}".format(published("envoy")[8080][1])
    assert command[command.index("--public-base-url") + 1] == gateway + helper.path_prefix


def test_compose_publishes_the_uis_on_loopback() -> None:
    assert published("jaeger")[16686] == ("127.0.0.1", 16686)
    assert published("prometheus")[9090] == ("127.0.0.1", 9090)
    for name in ("policy-service", "redis", "demo-peers"):
        assert "ports" not in service(name)
    assert service("jaeger")["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


# -- the image ----------------------------------------------------------------------------------


def test_dockerfile_installs_the_project_and_runs_as_a_numbered_user() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "pip install '.[dev]'" in runs
    (user,) = [rest for keyword, rest in instructions if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    security = pod_spec()["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))
    (entrypoint,) = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == '["policy-service"]'


def test_dockerfile_copies_only_what_the_ignore_file_lets_through() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    sources = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY":
            sources += rest.split()[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source in allowed, f"{source} is not in deploy/Dockerfile.dockerignore"


# -- Kubernetes ----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = k8s("kustomization.yaml")["resources"]
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(present)


def test_selectors_match_the_pod_labels() -> None:
    deployment = k8s("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        k8s("service.yaml")["spec"]["selector"],
        k8s("pdb.yaml")["spec"]["selector"]["matchLabels"],
        *[c["labelSelector"]["matchLabels"] for c in pod_spec()["topologySpreadConstraints"]],
    ]
    for selector in selectors:
        assert selector
        assert selector.items() <= labels.items()
    assert {c["topologyKey"] for c in pod_spec()["topologySpreadConstraints"]} >= {
        "kubernetes.io/hostname"
    }


def test_deployment_runs_replicas_the_pdb_keeps() -> None:
    replicas = k8s("deployment.yaml")["spec"]["replicas"]
    assert replicas >= 2
    pdb = k8s("pdb.yaml")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 1


def test_container_args_parse_and_match_the_ports() -> None:
    args = serve_args(container()["args"])
    (listen,) = args.listen
    grpc_port = host_port(listen)[1]
    metrics_port = host_port(args.metrics_listen)[1]
    assert args.audit_log == "-"
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    annotations = k8s("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_probes_are_native_grpc_on_the_grpc_port() -> None:
    (listen,) = serve_args(container()["args"]).listen
    grpc_port = host_port(listen)[1]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container()[probe]["grpc"]["port"] == grpc_port, probe


def test_service_exposes_the_container_ports_by_name() -> None:
    spec = k8s("service.yaml")["spec"]
    ports = {p["name"]: p for p in spec["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert set(ports) == {"grpc", "metrics"}
    for name, port in ports.items():
        assert port["targetPort"] in (name, container_ports[name])
        assert port["port"] == container_ports[name]
    assert ports["grpc"]["appProtocol"] == "grpc"


def test_envoy_authz_target_is_the_kubernetes_service_too() -> None:
    # The same envoy-config --authz works in the cluster (same namespace): headless, so
    # Envoy's STRICT_DNS cluster sees every ready pod.
    spec = k8s("service.yaml")
    grpc = next(p for p in spec["spec"]["ports"] if p["name"] == "grpc")
    assert cluster_endpoints(AUTHZ_CLUSTER) == [(spec["metadata"]["name"], grpc["port"])]
    assert spec["spec"]["clusterIP"] == "None"


def test_configmap_carries_the_deploy_bundle() -> None:
    assert k8s("configmap.yaml")["data"]["bundle.yaml"] == BUNDLE.read_text(encoding="utf-8")


def test_the_bundle_argument_is_the_mounted_configmap() -> None:
    bundle_path = Path(serve_args(container()["args"]).bundle)
    configmap_name = k8s("configmap.yaml")["metadata"]["name"]
    volume = next(v for v in pod_spec()["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == configmap_name
    mount = next(m for m in container()["volumeMounts"] if m["name"] == volume["name"])
    assert Path(mount["mountPath"]) / "bundle.yaml" == bundle_path
    assert mount["readOnly"] is True


def test_termination_grace_outlasts_prestop_and_drain() -> None:
    args = serve_args(container()["args"])
    prestop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = args.grace + (STOP_MARGIN_SECONDS if args.workers > 1 else 0)
    assert pod_spec()["terminationGracePeriodSeconds"] > drain + prestop


def test_the_pod_runs_one_worker_per_requested_core_with_buckets_in_redis() -> None:
    args = serve_args(container()["args"])
    assert args.workers > 1
    assert float(container()["resources"]["requests"]["cpu"]) == args.workers
    # serve --workers refuses buckets kept in process; these come from the Secret's URL.
    assert REDIS_URL_ENV_VAR in {e["name"] for e in container()["env"]}


def test_redis_url_comes_from_a_secret() -> None:
    env = {e["name"]: e for e in container()["env"]}
    reference = env[REDIS_URL_ENV_VAR]["valueFrom"]["secretKeyRef"]
    assert reference["name"]
    assert reference["key"]
    assert "value" not in env[REDIS_URL_ENV_VAR]
    assert serve_args(container()["args"]).redis_url is None
    assert not re.search(r"rediss?://", (K8S / "deployment.yaml").read_text(encoding="utf-8"))
    # The README's one-line Secret creation names the same Secret and key.
    readme = README.read_text(encoding="utf-8")
    assert f"secret generic {reference['name']} --from-literal={reference['key']}=" in readme


def test_otel_environment_names_the_service_and_a_collector() -> None:
    env = {e["name"]: e.get("value") for e in container()["env"]}
    assert env["OTEL_SERVICE_NAME"] == "policy-service"
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"] or "")
    assert endpoint.scheme in ("http", "https")
    assert endpoint.port == 4317


def test_container_is_locked_down_and_sized() -> None:
    security = container()["securityContext"]
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container()["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    # A read-only root needs a writable /tmp for anything that asks for a temp file.
    assert any(m["mountPath"] == "/tmp" for m in container()["volumeMounts"])


def test_kustomization_sets_the_deployments_image() -> None:
    (image,) = k8s("kustomization.yaml")["images"]
    assert image["name"] == container()["image"]
    assert image["newTag"]


# -- the README -------------------------------------------------------------------------------


def test_readme_has_the_commands_and_urls() -> None:
    readme = README.read_text(encoding="utf-8")
    for text in (
        "docker compose -f deploy/compose.yaml up --build",
        "kubectl apply -k deploy/k8s",
        "http://localhost:8080",
        "http://localhost:16686",
        "http://localhost:9090",
        "curl -s http://localhost:8080/fininfo/mcp",
    ):
        assert text in readme, text
