"""Write the generated deploy files from deploy/bundle.yaml (run from the repository root).

python deploy/generate.py            # rewrites deploy/envoy.yaml, deploy/k8s/configmap.yaml
python deploy/generate.py --check    # exit 1 if either is stale (the tests check too)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
import textwrap
from pathlib import Path

from policy_service.cli.main import main as policy_service

DEPLOY = Path(__file__).resolve().parent
ENVOY_YAML = DEPLOY / "envoy.yaml"
CONFIGMAP = DEPLOY / "k8s" / "configmap.yaml"

# Inside a container 127.0.0.1 is out of reach of published ports and of Prometheus, so
# the listener and the admin interface bind every address (compose publishes them on the
# host's loopback only).
ENVOY_CONFIG_ARGS = (
    "envoy-config",
    "deploy/bundle.yaml",
    "--authz",
    "policy-service:9001",
    "--otlp-collector",
    "jaeger:4317",
    "--http-port",
    "8080",
    "--admin-port",
    "9901",
    "--listen-address",
    "0.0.0.0",
    "--admin-address",
    "0.0.0.0",
)

ENVOY_HEADER = f"""\
# Envoy config for deploy/compose.yaml. GENERATED: do not edit by hand.
#
# Rendered from deploy/bundle.yaml's upstreams by
#   policy-service {shlex.join(ENVOY_CONFIG_ARGS[:4])} \\
#     {shlex.join(ENVOY_CONFIG_ARGS[4:10])} \\
#     {shlex.join(ENVOY_CONFIG_ARGS[10:])}
# After changing the bundle, regenerate from the repository root with
#   python deploy/generate.py
#
# Hosts are compose service names, resolved by Envoy at run time (STRICT_DNS clusters).
# Plain HTTP on 8080 and no TLS listener: see deploy/README.md before production.
"""

CONFIGMAP_HEADER = """\
# The policy bundle for deploy/k8s/deployment.yaml. GENERATED from deploy/bundle.yaml:
# edit that file, then regenerate from the repository root with
#   python deploy/generate.py
apiVersion: v1
kind: ConfigMap
metadata:
  name: policy-service-bundle
  labels:
    app.kubernetes.io/name: policy-service
    app.kubernetes.io/component: ext-authz
data:
  bundle.yaml: |
"""


def envoy_config_output() -> str:
    """What ``policy-service envoy-config ...`` prints for the deploy bundle."""
    args = list(ENVOY_CONFIG_ARGS)
    args[1] = str(DEPLOY / "bundle.yaml")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if policy_service(args) != 0:
            raise SystemExit("policy-service envoy-config failed")
    return out.getvalue()


def render_envoy_yaml() -> str:
    return ENVOY_HEADER + "\n" + envoy_config_output()


def render_configmap() -> str:
    bundle = (DEPLOY / "bundle.yaml").read_text(encoding="utf-8")
    return CONFIGMAP_HEADER + textwrap.indent(bundle, "    ")


def generated() -> dict[Path, str]:
    return {ENVOY_YAML: render_envoy_yaml(), CONFIGMAP: render_configmap()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/generate.py")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = False
    for path, text in generated().items():
        if args.check:
            if path.read_text(encoding="utf-8") != text:
                print(f"{path.name} is stale: run python deploy/generate.py", file=sys.stderr)
                stale = True
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(DEPLOY.parent)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
