"""`dev`, `token` and `envoy-config`: the dev stack, its tokens, and Envoy configs for bundles."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from policy_service.cli.flags import (
    add_redis_arguments,
    add_workers_argument,
    redis_settings_from_args,
)
from policy_service.dev import DEFAULT_STATE_DIR
from policy_service.errors import ConfigError
from policy_service.gateway.demo_topology import DEMO_UPSTREAMS

if TYPE_CHECKING:
    from policy_service.cli.flags import Commands


def _port_list(text: str) -> list[int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"want three ports, PORT,PORT,PORT; got {text!r}")
    return [int(part) for part in parts]


def _cmd_dev(args: argparse.Namespace) -> int:
    from policy_service.dev.stack import DevPorts, run_dev_stack

    ports = DevPorts(
        http=args.http_port,
        https=args.https_port,
        admin=args.admin_port,
        authz=args.authz_port,
        fininfo=args.peer_ports[0],
        currenttime=args.peer_ports[1],
        agent=args.peer_ports[2],
        metrics=args.metrics_port,
    )
    asyncio.run(
        run_dev_stack(Path(args.state_dir), ports, redis_settings_from_args(args), args.workers)
    )
    return 0


def _cmd_envoy_config(args: argparse.Namespace) -> int:
    from policy_service.bundles.loader import load_bundle
    from policy_service.gateway.envoy_yaml import dump_envoy_yaml
    from policy_service.gateway.layout import (
        AuthzEndpoint,
        EnvoyLayout,
        UpstreamRoute,
        otlp_collector_from_endpoint,
    )

    bundle = load_bundle(args.bundle)
    routes = []
    for upstream in bundle.upstreams:
        if upstream.backend is None:
            raise ConfigError(
                f"upstream '{upstream.name}' has no backend: add backend: to the bundle"
            )
        backend = urlsplit(upstream.backend)
        assert backend.hostname is not None
        assert backend.port is not None
        routes.append(
            UpstreamRoute(
                upstream.name,
                upstream.path_prefix,
                backend.hostname,
                backend.port,
                protocol=upstream.protocol.value,
            )
        )
    authz = []
    for address in args.authz:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--authz wants HOST:PORT, got '{address}'")
        authz.append(AuthzEndpoint(host, int(port)))
    layout = EnvoyLayout(
        upstreams=tuple(routes),
        authz=tuple(authz),
        plain_port=args.http_port,
        tls_port=args.https_port if args.tls_cert else None,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        admin_port=args.admin_port,
        listen_address=args.listen_address,
        admin_address=args.admin_address,
        otlp_collector=(
            otlp_collector_from_endpoint(args.otlp_collector) if args.otlp_collector else None
        ),
    )
    print(dump_envoy_yaml(layout), end="")
    return 0


def register(commands: Commands) -> None:
    token = commands.add_parser("token", help="mint a token from the dev stack's issuer")
    token.add_argument("--scope", action="append", default=[], help="a scope to grant (repeatable)")
    token.add_argument("--sub", default="dev-user", help="the token's subject")
    token.add_argument("--client-id", default="dev-client", help="the token's client_id claim")
    token.add_argument("--upstream", default="fininfo", help="whose resource URI is the audience")
    token.add_argument("--aud", help="explicit audience (overrides --upstream)")
    token.add_argument(
        "--lifetime",
        type=int,
        default=3600,
        help="seconds until exp; the dev bundle allows 30 s of clock skew (an issuer's "
        "leeway_seconds), so a token is still "
        "accepted up to 30 s after exp (and from 30 s before nbf)",
    )
    token.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="the dev stack's state directory, where its issuer key is",
    )
    token.set_defaults(run=_cmd_token)

    dev = commands.add_parser(
        "dev",
        help="run Envoy + policy service + demo MCP servers and A2A agent on loopback",
        description="Bring up a whole gateway on loopback from embedded defaults: Envoy, the "
        "policy service (watching its bundle), two demo MCP servers and a demo A2A agent. "
        "Ctrl-C stops everything.",
    )
    dev.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="where the dev stack keeps its state: the issuer's key (kept, so tokens stay "
        "valid), the dev API key, and the bundle, Envoy config, certificates and audit log "
        "(rewritten at each start); relative to the current directory",
    )
    dev.add_argument("--http-port", type=int, default=8080, help="Envoy's plain HTTP listener")
    dev.add_argument("--https-port", type=int, default=8443, help="Envoy's HTTPS listener")
    dev.add_argument("--admin-port", type=int, default=9901, help="Envoy's admin interface")
    dev.add_argument("--authz-port", type=int, default=9001, help="the policy service (gRPC)")
    dev.add_argument("--metrics-port", type=int, default=9464, help="Prometheus /metrics")
    dev.add_argument(
        "--peer-ports",
        type=_port_list,
        default=",".join(str(u.port) for u in DEMO_UPSTREAMS),
        metavar="FININFO,CURRENTTIME,AGENT",
        help="the demo MCP servers and A2A agent",
    )
    add_workers_argument(
        dev,
        "policy service processes (default: 1, in this process); above 1 the stack runs "
        "`serve --workers N` as a child process, with the rate-limit buckets in Redis (a "
        "redis-server of its own unless --redis-url is given)",
    )
    add_redis_arguments(dev)
    dev.set_defaults(run=_cmd_dev)

    envoy = commands.add_parser("envoy-config", help="print an Envoy config for a bundle")
    envoy.add_argument("bundle", help="bundle file or directory; each upstream becomes a route")
    envoy.add_argument(
        "--authz",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a policy-service endpoint (repeatable: one per process)",
    )
    envoy.add_argument("--http-port", type=int, default=8080, help="the plain HTTP listener")
    envoy.add_argument(
        "--https-port", type=int, default=8443, help="the HTTPS listener (with --tls-cert)"
    )
    envoy.add_argument("--tls-cert", help="PEM certificate chain for the HTTPS listener")
    envoy.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    envoy.add_argument("--admin-port", type=int, default=9901, help="Envoy's admin interface")
    envoy.add_argument(
        "--listen-address",
        default="127.0.0.1",
        help="where the listeners bind (0.0.0.0 in a container)",
    )
    envoy.add_argument(
        "--admin-address",
        default="127.0.0.1",
        help="where the admin interface binds; it has no authentication, keep it private",
    )
    envoy.add_argument(
        "--otlp-collector",
        metavar="HOST:PORT",
        help="send Envoy's spans to this OTLP/gRPC collector (http:// and https:// URLs work too)",
    )
    envoy.set_defaults(run=_cmd_envoy_config)


def _cmd_token(args: argparse.Namespace) -> int:
    from policy_service.dev.issuer import DevIssuer

    issuer = DevIssuer.load(Path(args.state_dir))
    audience = args.aud or issuer.audience_for(args.upstream)
    token = issuer.mint(
        subject=args.sub,
        scopes=args.scope,
        audience=audience,
        client_id=args.client_id,
        lifetime_seconds=args.lifetime,
    )
    print(token)
    return 0
