"""`serve`: the ext_authz gRPC service."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from policy_service import event_loop
from policy_service.cli.flags import (
    add_redis_arguments,
    add_telemetry_arguments,
    metrics_address,
    redis_settings_from_args,
    trail_from_args,
)
from policy_service.errors import ConfigError, PolicyServiceError
from policy_service.event_loop import EventLoop

if TYPE_CHECKING:
    from policy_service.bundles.sources import BundleSource
    from policy_service.cli.flags import Commands
    from policy_service.policy.model import CompiledBundle


def register(commands: Commands) -> None:
    from policy_service.bundles.sources import BUNDLE_TOKEN_ENV_VAR

    serve = commands.add_parser("serve", help="run the ext_authz gRPC service")
    serve.add_argument(
        "bundle",
        help="a bundle file, a bundle directory or an http(s) URL (sent the bearer token in "
        f"${BUNDLE_TOKEN_ENV_VAR}, if set)",
    )
    serve.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="where the gRPC service listens (repeatable; default: 127.0.0.1:9001)",
    )
    serve.add_argument(
        "--watch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reload the bundle when it changes (SIGHUP reloads either way)",
    )
    serve.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help="how often to look for a new bundle (default: 1 for a path, 30 for a URL)",
    )
    serve.add_argument(
        "--verify-key",
        metavar="PUBLIC.pem",
        help="refuse any bundle not signed by this key, at start and on every reload",
    )
    serve.add_argument(
        "--dry-run-bundle",
        metavar="BUNDLE|DIR|URL",
        help="also decide every check with this bundle and record what it would have done "
        "(audit event dry_run, metrics), without enforcing it; reloaded like the bundle",
    )
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve gRPC over TLS")
    serve.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    serve.add_argument("--grace", type=float, default=10.0, help="seconds to drain on SIGTERM")
    serve.add_argument(
        "--no-reflection", action="store_true", help="do not serve gRPC server reflection"
    )
    serve.add_argument(
        "--event-loop",
        choices=[loop.value for loop in EventLoop],
        help="the asyncio event loop (default: uvloop when installed, else asyncio)",
    )
    add_redis_arguments(serve)
    add_telemetry_arguments(serve)
    serve.set_defaults(run=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from policy_service.app import BundleWatch, ServiceSettings, build_server
    from policy_service.bundles.reload import bundle_loader
    from policy_service.bundles.signing import load_verification_key
    from policy_service.bundles.sources import source_for
    from policy_service.server import ServerSettings, TlsSettings, serve_until_signalled

    if args.poll_interval is not None and not args.poll_interval > 0:
        raise ConfigError("--poll-interval must be a positive number of seconds")
    key = load_verification_key(args.verify_key) if args.verify_key else None
    load = bundle_loader(key, os.environ)

    def first_load(location: str) -> tuple[BundleSource, CompiledBundle]:
        # No last good bundle to fall back on yet: any problem ends the process.
        source = source_for(location, environ=os.environ)
        files = asyncio.run(source.read())
        bundle = load(files)
        source.accepted(files)
        return source, bundle

    source, bundle = first_load(args.bundle)
    dry_run_source = dry_run_bundle = None
    if args.dry_run_bundle:
        # Checked like the enforced bundle (signature included): it is policy too.
        dry_run_source, dry_run_bundle = first_load(args.dry_run_bundle)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise PolicyServiceError("--tls-cert and --tls-key go together")
        tls = TlsSettings(
            Path(args.tls_cert),
            Path(args.tls_key),
            Path(args.tls_client_ca) if args.tls_client_ca else None,
        )
    settings = ServerSettings(
        listen=tuple(args.listen or ["127.0.0.1:9001"]),
        tls=tls,
        grace_seconds=args.grace,
        reflection=not args.no_reflection,
        metrics_listen=metrics_address(args),
    )

    service = ServiceSettings(settings, redis_settings_from_args(args))
    trail = trail_from_args(args, os.environ)

    def watched(source: BundleSource) -> BundleWatch:
        return BundleWatch(source, load, watch=args.watch, interval_seconds=args.poll_interval)

    async def run() -> None:
        # Built on the loop that serves: grpc.aio and the Redis client bind to it.
        server = build_server(
            bundle,
            service,
            trail,
            watch=watched(source),
            dry_run=(
                (dry_run_bundle, watched(dry_run_source))
                if dry_run_source is not None and dry_run_bundle is not None
                else None
            ),
        )
        await serve_until_signalled(server)

    event_loop.run(run(), EventLoop(args.event_loop) if args.event_loop else None)
    return 0
