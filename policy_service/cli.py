"""policy-service: an Envoy ext_authz policy service for MCP and A2A traffic.

policy-service serve BUNDLE|DIR|URL [--listen HOST:PORT ...] [--no-watch] [--verify-key ...]
policy-service lint BUNDLE [BUNDLE ...]
policy-service hash-key               (reads the key from stdin)
policy-service token --scope ...      (mints a dev-issuer token)
policy-service envoy-config BUNDLE    (prints an Envoy config for the bundle)
policy-service dev                    (Envoy + policy service + demo peers)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from policy_service.dev import DEFAULT_STATE_DIR
from policy_service.errors import BundleError, ConfigError, PolicyServiceError

if TYPE_CHECKING:
    from policy_service.bundles.sources import BundleSource
    from policy_service.policy.model import CompiledBundle
    from policy_service.ratelimits.redis_store import RedisSettings
    from policy_service.telemetry.trail import Trail

REDIS_URL_ENV_VAR = "POLICY_SERVICE_REDIS_URL"


def _cmd_lint(args: argparse.Namespace) -> int:
    from policy_service.bundles.loader import load_bundle

    failed = False
    for path in args.bundles:
        try:
            bundle = load_bundle(path)
        except BundleError as exc:
            failed = True
            print(exc, file=sys.stderr)
            continue
        rules = sum(len(upstream.rules) for upstream in bundle.upstreams)
        print(
            f"{path}: ok (revision {bundle.revision}; {len(bundle.upstreams)} upstreams, "
            f"{rules} rules, {len(bundle.limits)} limits, {len(bundle.issuers)} issuers, "
            f"{len(bundle.api_keys)} api keys)"
        )
    return 1 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from policy_service.bundles.reload import BundleReloader, bundle_loader
    from policy_service.bundles.signing import load_verification_key
    from policy_service.bundles.sources import source_for
    from policy_service.pipeline import Gateway, GatewayState
    from policy_service.ratelimits.limiter import build_limiter
    from policy_service.server import (
        PolicyServer,
        ServerSettings,
        TlsSettings,
        serve_until_signalled,
    )

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

    redis_settings = redis_settings_from_args(args)
    trail = trail_from_args(args, os.environ)

    async def run() -> None:
        # grpc.aio binds the server to the loop that exists when it is built, and the
        # Redis client to the loop it first runs on.
        limiter = build_limiter(redis_settings, trail.tracer)
        gateway = Gateway(GatewayState.from_bundle(bundle), limiter, trail.tracer)
        reloaders = [
            BundleReloader(
                gateway, source, load=load, watch=args.watch, interval_seconds=args.poll_interval
            )
        ]
        if dry_run_source is not None and dry_run_bundle is not None:
            gateway.swap_dry_run(GatewayState.from_bundle(dry_run_bundle))
            reloaders.append(
                BundleReloader(
                    gateway,
                    dry_run_source,
                    load=load,
                    watch=args.watch,
                    interval_seconds=args.poll_interval,
                    dry_run=True,
                )
            )
        await serve_until_signalled(PolicyServer(gateway, settings, trail, reloaders))

    asyncio.run(run())
    return 0


def redis_settings_from_args(args: argparse.Namespace) -> RedisSettings | None:
    from policy_service.ratelimits.redis_store import RedisSettings

    # The URL may carry a password: the environment keeps it out of the process list.
    url = args.redis_url or os.environ.get(REDIS_URL_ENV_VAR)
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{REDIS_URL_ENV_VAR} / --redis-url must be a redis:// or rediss:// URL")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", args.redis_key_prefix):
        raise ConfigError("--redis-key-prefix: letters, digits and _ . : - only (it is a hash tag)")
    if not 0 < args.redis_timeout <= 10:
        raise ConfigError("--redis-timeout must be between 0 and 10 seconds")
    return RedisSettings(
        url=url,
        cluster=args.redis_cluster,
        timeout_seconds=args.redis_timeout,
        max_connections=args.redis_max_connections,
        key_prefix=args.redis_key_prefix,
        pipeline=args.redis_pipeline,
    )


def trail_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Trail:
    """Audit sink and failure mode from the flags; tracing from the OTEL_* variables."""
    from opentelemetry import trace

    from policy_service.otel.provider import setup_tracing
    from policy_service.telemetry.audit import AuditFailureMode, Auditor, FileSink
    from policy_service.telemetry.trail import Trail

    provider = setup_tracing(environ)
    if provider is not None:
        trace.set_tracer_provider(provider)  # libraries that trace share our exporter
    sink: FileSink | None
    if args.audit_log == "off":
        logging.getLogger("policy_service.audit").warning(
            "audit events are off (--audit-log off): decisions leave no audit trail"
        )
        sink = None
    elif args.audit_log == "-":
        sink = FileSink.stdout()
    else:
        try:
            sink = FileSink.open(Path(args.audit_log))
        except OSError as exc:
            raise ConfigError(f"--audit-log {args.audit_log}: {exc.strerror}") from None
    # Metrics come with --metrics-listen: the server builds them when it has an endpoint.
    return Trail(
        tracer_provider=provider, auditor=Auditor(sink, AuditFailureMode(args.audit_failure))
    )


def metrics_address(args: argparse.Namespace) -> tuple[str, int] | None:
    if not args.metrics_listen:
        return None
    host, _, port = args.metrics_listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics-listen wants HOST:PORT, got '{args.metrics_listen}'")
    return host.strip("[]"), int(port)


def _cmd_hash_key(args: argparse.Namespace) -> int:
    from policy_service.identity.apikeys import hash_api_key

    # From stdin, so the key never lands in shell history or the process list.
    key = sys.stdin.readline().strip()
    if not key:
        print("hash-key: give the API key on standard input", file=sys.stderr)
        return 2
    print(hash_api_key(key))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policy-service", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="how much the service logs",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    lint = commands.add_parser("lint", help="validate bundles; non-zero exit on any problem")
    lint.add_argument("bundles", nargs="+", help="bundle files or directories")
    lint.set_defaults(run=_cmd_lint)

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
    add_redis_arguments(serve)
    add_telemetry_arguments(serve)
    serve.set_defaults(run=_cmd_serve)

    hash_key = commands.add_parser(
        "hash-key", help="print the SHA-256 of an API key read from stdin"
    )
    hash_key.set_defaults(run=_cmd_hash_key)

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

    _add_late_commands(commands)
    _finish_help(parser)
    return parser


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or not action.option_strings:
            return text
        if action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _finish_help(parser: argparse.ArgumentParser) -> None:
    """Defaults shown everywhere, and each command's one-line help heading its own --help."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            summary = summaries.get(name) or ""
            if sub.description is None:
                sub.description = summary[:1].upper() + summary[1:] + "."
            _finish_help(sub)


def add_redis_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "rate limits", "buckets live in process unless a Redis URL is given"
    )
    group.add_argument(
        "--redis-url", help=f"redis://host:port/db (or set ${REDIS_URL_ENV_VAR}, for passwords)"
    )
    group.add_argument("--redis-cluster", action="store_true", help="the URL names a Cluster node")
    group.add_argument(
        "--redis-timeout", type=float, default=0.1, help="seconds a check waits for Redis"
    )
    group.add_argument(
        "--redis-max-connections", type=int, default=64, help="Redis connections per process"
    )
    group.add_argument(
        "--redis-key-prefix", default="policy-service", help="hash tag of every bucket key"
    )
    group.add_argument(
        "--redis-pipeline",
        action="store_true",
        help="send checks that arrive together in one round trip (not on a Cluster)",
    )


def add_telemetry_arguments(parser: argparse.ArgumentParser, audit_log: str = "-") -> None:
    group = parser.add_argument_group(
        "telemetry",
        "spans go where the standard OTEL_* variables say (OTEL_EXPORTER_OTLP_ENDPOINT, "
        "OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER ...); without them no spans are made",
    )
    group.add_argument(
        "--audit-log",
        default=audit_log,
        help="file to append one JSON audit event per decision to; - for stdout, off for none",
    )
    group.add_argument(
        "--audit-failure",
        choices=("closed", "open"),
        default="closed",
        help="when an audit event cannot be written: refuse the call (closed) or let it "
        "through and count it (open)",
    )
    group.add_argument("--metrics-listen", help="HOST:PORT for the Prometheus /metrics endpoint")


def _add_late_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from policy_service import dev_cli

    dev_cli.register(commands)
    from policy_service import authoring_cli

    authoring_cli.register(commands)
    from policy_service import bundle_cli

    bundle_cli.register(commands)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return int(args.run(args))
    except PolicyServiceError as exc:
        print(f"policy-service {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
