"""Flags and settings several commands share: Redis, telemetry, help formatting."""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from policy_service.errors import ConfigError

if TYPE_CHECKING:
    from policy_service.ratelimits.redis_store import RedisSettings
    from policy_service.telemetry.trail import Trail

REDIS_URL_ENV_VAR = "POLICY_SERVICE_REDIS_URL"

if TYPE_CHECKING:
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


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
        "--redis-max-connections",
        type=int,
        default=64,
        help="Redis Cluster: checks in flight per process (one Redis server gets one "
        "connection per process, shared by every check)",
    )
    group.add_argument(
        "--redis-key-prefix", default="policy-service", help="hash tag of every bucket key"
    )
    group.add_argument(
        "--redis-pipeline",
        action="store_true",
        help="send checks that arrive together in one round trip (not on a Cluster)",
    )


# A sanity bound, not a tuning: a worker is a whole process (interpreter, bundle,
# connections), and more of them than cores only adds contention.
MAX_WORKERS = 256


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"give a number of processes, 1 to {MAX_WORKERS}")
    return int(text)


def add_workers_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--workers", type=_worker_count, default=1, metavar="N", help=help_text)


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
        help="when an audit event cannot be written (a full disk, a reader that stalls): "
        "refuse the call (closed) or let it through and count it (open); denials go out "
        "unaudited either way",
    )
    group.add_argument("--metrics-listen", help="HOST:PORT for the Prometheus /metrics endpoint")


def redis_settings_from_args(args: argparse.Namespace) -> RedisSettings | None:
    from policy_service.ratelimits.redis_store import RedisSettings
    from policy_service.ratelimits.redis_url import parse_redis_url

    # The URL may carry a password: the environment keeps it out of the process list.
    url = args.redis_url or os.environ.get(REDIS_URL_ENV_VAR)
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{REDIS_URL_ENV_VAR} / --redis-url must be a redis:// or rediss:// URL")
    if not args.redis_cluster:
        # Parsed here too, so a bad query parameter or TLS file stops the command at once.
        parse_redis_url(url)
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


def trail_from_args(
    args: argparse.Namespace, environ: Mapping[str, str], audit_lock_fd: int | None = None
) -> Trail:
    """Audit sink and failure mode from the flags; tracing from the OTEL_* variables.

    ``audit_lock_fd``: this process is one of several writing the same audit stream
    (``serve --workers``), and long lines are written holding a record lock on it."""
    from policy_service.app import build_trail
    from policy_service.telemetry.audit import AuditFailureMode, FileSink

    sink: FileSink | None
    if args.audit_log == "off":
        logging.getLogger("policy_service.audit").warning(
            "audit events are off (--audit-log off): decisions leave no audit trail"
        )
        sink = None
    elif args.audit_log == "-":
        try:
            sink = FileSink.stdout()
        except OSError as exc:  # stdout closed
            raise ConfigError(f"--audit-log -: stdout: {exc.strerror}") from None
    else:
        try:
            sink = FileSink.open(Path(args.audit_log))
        except OSError as exc:
            raise ConfigError(f"--audit-log {args.audit_log}: {exc.strerror}") from None
    if sink is not None and audit_lock_fd is not None:
        sink = sink.shared(audit_lock_fd)
    # Metrics come with --metrics-listen: the server's builder adds them when it has one.
    return build_trail(
        environ,
        audit_sink=sink,
        audit_failure=AuditFailureMode(args.audit_failure),
        global_tracer=True,  # this process is the service: libraries share our exporter
    )


def metrics_address(args: argparse.Namespace) -> tuple[str, int] | None:
    if not args.metrics_listen:
        return None
    host, _, port = args.metrics_listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics-listen wants HOST:PORT, got '{args.metrics_listen}'")
    return host.strip("[]"), int(port)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or not action.option_strings:
            return text
        if action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def finish_help(parser: argparse.ArgumentParser) -> None:
    """Defaults shown everywhere, and each command's one-line help heading its own --help."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            summary = summaries.get(name) or ""
            if sub.description is None:
                sub.description = summary[:1].upper() + summary[1:] + "."
            finish_help(sub)
