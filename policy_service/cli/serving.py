"""`serve`: the ext_authz gRPC service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from policy_service import event_loop
from policy_service.cli.flags import (
    add_redis_arguments,
    add_telemetry_arguments,
    add_workers_argument,
    metrics_address,
    redis_settings_from_args,
    trail_from_args,
)
from policy_service.errors import ConfigError, PolicyServiceError
from policy_service.event_loop import EventLoop

log = logging.getLogger("policy_service.serve")

if TYPE_CHECKING:
    from policy_service.bundles.reload import BundleLoad, BundleLoaded
    from policy_service.bundles.rollback import RollbackGuard
    from policy_service.bundles.signing import BundleVerificationKey
    from policy_service.bundles.sources import BundleSource
    from policy_service.cli.flags import Commands
    from policy_service.policy.model import CompiledBundle
    from policy_service.server import TlsSettings
    from policy_service.telemetry.recording import Recorder
    from policy_service.workers.worker import SupervisorChannel


def register(commands: Commands) -> None:
    from policy_service.bundles.rollback import STATE_DIR_ENV_VAR
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
        action="append",
        help="refuse any bundle not signed by this key, at start and on every reload; "
        "repeat it to accept several keys while rotating (the signature's key id picks one)",
    )
    serve.add_argument(
        "--rollback-state",
        metavar="FILE",
        help="with --verify-key: where the signing time of the newest bundle served is kept, "
        "so a bundle signed earlier is refused, across restarts too (default: a file per "
        f"bundle location in ${STATE_DIR_ENV_VAR}, else $XDG_STATE_HOME/policy-service, "
        "else ~/.local/state/policy-service)",
    )
    serve.add_argument(
        "--allow-rollback",
        action="store_true",
        help="start with this bundle even if it was signed before the newest one served "
        "(an intended rollback; logged); reloads stay protected",
    )
    serve.add_argument(
        "--dry-run-bundle",
        metavar="BUNDLE|DIR|URL",
        help="also decide every check with this bundle and record what it would have done "
        "(audit event dry_run, metrics), without enforcing it; reloaded like the bundle",
    )
    serve.add_argument(
        "--record",
        metavar="FILE",
        help="append one replayable JSON line per check to FILE, for `policy-service "
        "replay`: the request as the policy reads it and the verified caller, never a "
        "token, key or cookie; arguments only as the bundle's audit.include_arguments allows",
    )
    serve.add_argument(
        "--record-sample",
        type=_sample_rate,
        default=1.0,
        metavar="RATE",
        help="with --record: the share of checks recorded, above 0 up to 1",
    )
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve gRPC over TLS")
    serve.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    serve.add_argument("--grace", type=float, default=10.0, help="seconds to drain on SIGTERM")
    add_workers_argument(
        serve,
        "processes serving the --listen addresses (default: 1, this one). Above 1 they share "
        "each address (SO_REUSEPORT: the kernel spreads connections) and this process "
        "supervises them: it restarts one that dies, passes signals on and serves one "
        "/metrics for all; rate limits then need --redis-url",
    )
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
    from policy_service.workers.protocol import WorkerSeat

    seat = WorkerSeat.from_environ(os.environ)
    if seat is None:
        return _serve(args, None)
    from policy_service.workers.worker import SupervisorChannel

    # Started by `serve --workers N`. A SIGHUP before this worker serves would end it; the
    # supervisor sends it again once the worker serves (it may have read the bundle first).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    channel = SupervisorChannel(seat)
    try:
        return _serve(args, channel)
    except BaseException as exc:
        channel.report_failure(_failure_reason(exc))  # nothing once it has served
        raise


def _serve(args: argparse.Namespace, channel: SupervisorChannel | None) -> int:
    from policy_service.app import BundleWatch, ServiceSettings, build_server
    from policy_service.bundles.reload import bundle_loader
    from policy_service.bundles.signing import load_verification_key, verification_keys
    from policy_service.bundles.sources import source_for
    from policy_service.server import ServerSettings, TlsSettings, serve_until_signalled

    if args.poll_interval is not None and not args.poll_interval > 0:
        raise ConfigError("--poll-interval must be a positive number of seconds")
    # The supervisor (channel None, --workers above 1) and each worker load the same way.
    workers = channel.seat.count if channel is not None else args.workers
    if channel is None and workers > 1:
        _check_shareable(args.listen or ["127.0.0.1:9001"], workers)
    keys = (
        verification_keys([load_verification_key(path) for path in args.verify_key])
        if args.verify_key
        else ()
    )
    if keys and channel is None:  # said once, by the process the operator started
        # Key ids only: they say which keys are trusted and nothing of the keys themselves.
        ids = ", ".join(key.key_id for key in keys)
        log.info("bundle signatures: verified with %d key(s): %s", len(keys), ids)
    load = enforced_load = bundle_loader(keys, os.environ)
    guard = _rollback_guard(args, keys, quiet=channel is not None)
    if workers > 1 and redis_settings_from_args(args) is None:
        from policy_service.workers.worker import (
            refuse_in_process_limits,
            warn_in_process_sessions,
        )

        # The enforced bundle's only: a dry-run bundle's limits never take from a bucket.
        enforced_load = refuse_in_process_limits(load, workers)
        enforced_load = warn_in_process_sessions(
            enforced_load, workers, quiet_first=channel is not None
        )

    def first_load(location: str, load: BundleLoad) -> tuple[BundleSource, CompiledBundle]:
        # No last good bundle to fall back on yet: any problem ends the process.
        source = source_for(location, environ=os.environ)
        files = asyncio.run(source.read())
        bundle = load(files)
        source.accepted(files)
        return source, bundle

    source, bundle = first_load(args.bundle, enforced_load)
    if guard is not None:
        # The workers of serve --workers only check: the supervisor applied the flag once,
        # and a worker it restarts later must not lower the floor again.
        if args.allow_rollback and channel is None:
            guard.allow(bundle)
        else:
            guard.check(bundle, source.location)
        guard.accepted(bundle)  # a state file that cannot be written stops the start
        # Reloads are refused below the floor, and raise it as they serve.
        enforced_load = guard.guarded(enforced_load)
    dry_run_source = dry_run_bundle = None
    if args.dry_run_bundle:
        # Checked like the enforced bundle (signature included): it is policy too.
        dry_run_source, dry_run_bundle = first_load(args.dry_run_bundle, load)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise PolicyServiceError("--tls-cert and --tls-key go together")
        tls = TlsSettings(
            Path(args.tls_cert),
            Path(args.tls_key),
            Path(args.tls_client_ca) if args.tls_client_ca else None,
        )
    metrics_listen = metrics_address(args)
    if args.record_sample != 1.0 and not args.record:
        raise ConfigError("--record-sample needs --record")
    if channel is None and workers > 1:
        _check_readable(tls)
        _check_audit_log(args.audit_log)
        if args.record:
            _check_audit_log(args.record, flag="--record")
        return _supervise(args, workers, metrics_listen)
    if channel is not None and metrics_listen is not None:
        # The supervisor serves --metrics-listen; it reads this worker's registry here.
        metrics_listen = ("127.0.0.1", 0)
    settings = ServerSettings(
        listen=tuple(args.listen or ["127.0.0.1:9001"]),
        tls=tls,
        grace_seconds=args.grace,
        reflection=not args.no_reflection,
        metrics_listen=metrics_listen,
    )

    service = ServiceSettings(settings, redis_settings_from_args(args))
    trail = trail_from_args(
        args, os.environ, audit_lock_fd=channel.seat.audit_lock_fd if channel else None
    )
    if args.record:
        trail.recorder = _recorder(args.record, args.record_sample)

    def watched(
        source: BundleSource, load: BundleLoad, loaded: BundleLoaded | None = None
    ) -> BundleWatch:
        return BundleWatch(
            source, load, watch=args.watch, interval_seconds=args.poll_interval, loaded=loaded
        )

    async def run() -> None:
        # Built on the loop that serves: grpc.aio and the Redis client bind to it.
        server = build_server(
            bundle,
            service,
            trail,
            watch=watched(source, enforced_load, guard.accepted if guard else None),
            dry_run=(
                (dry_run_bundle, watched(dry_run_source, load))
                if dry_run_source is not None and dry_run_bundle is not None
                else None
            ),
        )
        await serve_until_signalled(server, channel.on_serving if channel else None)

    event_loop.run(run(), EventLoop(args.event_loop) if args.event_loop else None)
    return 0


def _rollback_guard(
    args: argparse.Namespace, keys: Sequence[BundleVerificationKey], *, quiet: bool
) -> RollbackGuard | None:
    """Rollback protection, for signed bundles only: an unsigned bundle's time is anyone's."""
    from policy_service.bundles.rollback import RollbackGuard, default_state_file

    if not keys:
        if args.allow_rollback or args.rollback_state:
            flag = "--allow-rollback" if args.allow_rollback else "--rollback-state"
            raise ConfigError(
                f"{flag} needs --verify-key: rollback protection orders bundles by their "
                "signing time, and only a verified signature gives one"
            )
        return None
    if args.rollback_state:
        state_file = Path(args.rollback_state)
    else:
        state_file = default_state_file(args.bundle, os.environ)
    guard = RollbackGuard.open(state_file)
    if not quiet:  # said once, by the process the operator started
        floor = guard.floor.describe() if guard.floor else "none yet"
        log.info("rollback protection: state in %s, newest served: %s", state_file, floor)
    return guard


def _supervise(
    args: argparse.Namespace, workers: int, metrics_listen: tuple[str, int] | None
) -> int:
    from policy_service.workers.supervisor import Supervisor, WorkerPlan

    # The workers run this same command line; their seat (in the environment) makes each
    # one serve instead of supervising.
    command_line = getattr(args, "command_line", None) or sys.argv[1:]
    plan = WorkerPlan(
        command=(sys.executable, "-m", "policy_service", *command_line),
        count=workers,
        grace_seconds=args.grace,
        metrics_listen=metrics_listen,
        share_audit=args.audit_log != "off",
    )
    asyncio.run(Supervisor(plan).run())
    return 0


def _check_shareable(addresses: list[str], workers: int) -> None:
    """Every worker binds every address: each must name one fixed TCP port."""
    for address in addresses:
        if address.startswith(("unix:", "unix-abstract:")):
            raise ConfigError(
                f"--workers {workers} cannot share --listen {address}: give HOST:PORT"
            )
        _, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"--listen wants HOST:PORT, got '{address}'")
        if int(port) == 0:
            raise ConfigError(
                f"--workers {workers} needs a fixed port to share: --listen {address} would "
                "give every worker a port of its own"
            )


def _check_readable(tls: TlsSettings | None) -> None:
    """What each worker reads at start, read once before any starts."""
    if tls is None:
        return
    for flag, path in (
        ("--tls-cert", tls.cert_file),
        ("--tls-key", tls.key_file),
        ("--tls-client-ca", tls.client_ca_file),
    ):
        if path is None:
            continue
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None


def _check_audit_log(audit_log: str, flag: str = "--audit-log") -> None:
    if audit_log in ("-", "off") and flag == "--audit-log":
        return
    from policy_service.telemetry.audit import FileSink

    try:
        FileSink.open(Path(audit_log)).close()
    except OSError as exc:
        raise ConfigError(f"{flag} {audit_log}: {exc.strerror}") from None


def _sample_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not 0.0 < rate <= 1.0:
        raise argparse.ArgumentTypeError("give a share of checks above 0 and up to 1, e.g. 0.1")
    return rate


def _recorder(path: str, sample: float) -> Recorder:
    from policy_service.telemetry.audit import FileSink
    from policy_service.telemetry.recording import Recorder

    # A file of its own: its lines are whole on O_APPEND, with one writer or with every
    # worker of serve --workers appending to it.
    try:
        sink = FileSink.open(Path(path))
    except OSError as exc:
        raise ConfigError(f"--record {path}: {exc.strerror}") from None
    log.info("recording checks to %s (a share of %g)", path, sample)
    return Recorder(sink, path, sample=sample)


def _failure_reason(exc: BaseException) -> str:
    # Our own messages, the OS's, and grpc's RuntimeError when it cannot bind ("Failed to
    # bind to address ..."): none carries a secret.
    if isinstance(exc, PolicyServiceError | OSError | RuntimeError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"unexpected error ({type(exc).__name__}); its log has the traceback"
