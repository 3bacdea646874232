"""The checked-in reference config, ``envoy/envoy.yaml``, and the command that writes it::

    python -m policy_service.gateway.envoy_config           # rewrite envoy/envoy.yaml
    python -m policy_service.gateway.envoy_config --check   # exit 1 if it is out of date

The renderer itself is split by job: ``layout`` (what it takes, and the checks), ``bootstrap``
(``render_envoy_config`` and the listeners, routes, filters, clusters and tracing modules it
assembles), ``envoy_yaml`` (YAML with shared parts written once) and ``baselines`` (the
benchmark's Envoy-only configs). The reference config's upstreams are the demo topology's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from policy_service.gateway.demo_topology import demo_routes
from policy_service.gateway.envoy_yaml import dump_envoy_yaml
from policy_service.gateway.layout import AuthzEndpoint, EnvoyLayout, OtlpCollector

REFERENCE_CERT_FILE = "envoy/certs/tls.crt"
REFERENCE_KEY_FILE = "envoy/certs/tls.key"

_REFERENCE_HEADER = """\
# Reference Envoy config for the MCP/A2A policy service (ext_authz).
#
# GENERATED from policy_service.gateway.envoy_config.reference_layout(); do not edit by hand.
# Regenerate:  python -m policy_service.gateway.envoy_config
# A test fails when this file and the renderer disagree. envoy/README.md explains each part.
#
# Ports: plain HTTP 8080 and TLS 8443 on 127.0.0.1, admin 9901, policy service (gRPC) 9001,
# OTLP trace collector (gRPC; Jaeger and the OpenTelemetry Collector listen there) 4317.
# Upstreams: /fininfo/ and /currenttime/ (MCP servers), /agents/helper/ (an A2A agent).
#
# The TLS listener reads envoy/certs/tls.crt and envoy/certs/tls.key, relative to Envoy's
# working directory (run Envoy from the repository root). These files are not checked in:
# the dev stack creates a fresh self-signed pair at start with
# policy_service.gateway.certs.generate_self_signed(); by hand:
#     python -m policy_service.gateway.certs envoy/certs
# In production, mount your own certificate and key at these paths.
"""


def reference_layout() -> EnvoyLayout:
    return EnvoyLayout(
        upstreams=demo_routes(),
        authz=(AuthzEndpoint("127.0.0.1", 9001),),
        tls_cert_file=REFERENCE_CERT_FILE,
        tls_key_file=REFERENCE_KEY_FILE,
        otlp_collector=OtlpCollector("127.0.0.1", 4317),
        trace_sampling_percent=100.0,
    )


def render_reference_yaml() -> str:
    """The exact text of the checked-in ``envoy/envoy.yaml``."""
    return _REFERENCE_HEADER + "\n" + dump_envoy_yaml(reference_layout())


def default_reference_path() -> Path:
    # policy_service/gateway/envoy_config.py -> repository root (source checkouts only).
    return Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m policy_service.gateway.envoy_config",
        description="Regenerate (or --check) the reference Envoy config.",
    )
    parser.add_argument("--output", type=Path, default=None, help="default: envoy/envoy.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    path: Path = args.output or default_reference_path()
    text = render_reference_yaml()
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date; run: {parser.prog}", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
