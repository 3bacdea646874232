"""The one place that builds the service: limiter and store, trail, servicer, server.

``serve``, the dev stack, the end-to-end fixtures, the unit-test harness and the benchmark
all ask here for what they run, so the service they test is the service that ships:

    build_trail(...)            audit sink and failure mode, tracing from OTEL_*, metrics
    build_gateway(bundle, ...)  the check pipeline, with its limiter (in process or Redis)
    build_servicer(...)         the Authorization servicer, its metrics watching the gateway
    build_answers(gateway, ...) the response side (ext_proc) beside it, sharing its state
    build_server(bundle, ...)   all of it behind a gRPC server, with the bundle watched

Build the gateway and the server on the event loop that will run them: grpc.aio binds a
server to the loop that exists when it is built, and the Redis client to the loop it first
runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry import trace

from policy_service.answering import ResponsePipeline
from policy_service.bundles.reload import BundleLoad, BundleLoaded, BundleReloader
from policy_service.bundles.sources import BundleSource
from policy_service.otel.provider import setup_tracing
from policy_service.pipeline import CheckPipeline
from policy_service.policy.model import CompiledBundle
from policy_service.ratelimits.limiter import build_limiter
from policy_service.ratelimits.redis_store import RedisSettings, RedisStore
from policy_service.responses.guard import AnswerGuard
from policy_service.responses.shared import InProcessState, RedisState
from policy_service.server import (
    AnswerProcessorService,
    AuthorizationService,
    PolicyServer,
    ServerSettings,
)
from policy_service.state import BundleState
from policy_service.telemetry.answer_metrics import AnswerMetrics
from policy_service.telemetry.audit import AuditFailureMode, Auditor, AuditSink
from policy_service.telemetry.metrics import CheckMetrics
from policy_service.telemetry.trail import Trail


@dataclass(frozen=True)
class BundleWatch:
    """Where a served bundle came from, and how to look for its next revision."""

    source: BundleSource
    load: BundleLoad | None = None  # default: unsigned bundles
    watch: bool = True  # False: reload on SIGHUP only
    interval_seconds: float | None = None  # default: the source's own
    loaded: BundleLoaded | None = None  # told of each bundle a reload puts into service


@dataclass(frozen=True)
class ServiceSettings:
    server: ServerSettings = field(default_factory=ServerSettings)
    redis: RedisSettings | None = None  # None: buckets in process


def build_trail(
    environ: Mapping[str, str],
    *,
    audit_sink: AuditSink | None = None,
    audit_failure: AuditFailureMode = AuditFailureMode.CLOSED,
    metrics: bool = False,
    global_tracer: bool = False,
) -> Trail:
    """The trail: spans as the ``OTEL_*`` variables say (none without them), audit events
    to ``audit_sink`` (none: no audit trail), and Prometheus metrics when asked for.

    ``global_tracer`` also makes the provider OpenTelemetry's global one, so libraries that
    trace share our exporter: right for a process that is the service, wrong in a test."""
    provider = setup_tracing(environ)
    if provider is not None and global_tracer:
        trace.set_tracer_provider(provider)
    return Trail(
        tracer_provider=provider,
        auditor=Auditor(audit_sink, audit_failure),
        metrics=CheckMetrics() if metrics else None,
    )


def build_gateway(
    bundle: CompiledBundle, trail: Trail, redis: RedisSettings | None = None
) -> CheckPipeline:
    """The check pipeline for ``bundle``; its limiter outlives bundles (buckets keep
    counting across reloads)."""
    limiter = build_limiter(redis, trail.tracer)
    store = limiter.store
    # Bound sessions and seen tool definitions live where the buckets do: in the same
    # Redis, so that every replica enforces them, or in this process.
    guard = AnswerGuard(RedisState(store) if isinstance(store, RedisStore) else InProcessState())
    return CheckPipeline(BundleState.from_bundle(bundle), limiter, guard=guard)


def build_answers(gateway: CheckPipeline, trail: Trail) -> AnswerProcessorService:
    """The response side (ext_proc) over the gateway's bundles and shared state."""
    metrics = AnswerMetrics(trail.metrics.registry) if trail.metrics is not None else None
    pipeline = ResponsePipeline(gateway.bundles, gateway.guard, trail.auditor, metrics)
    return AnswerProcessorService(pipeline, trail)


def build_servicer(gateway: CheckPipeline, trail: Trail) -> AuthorizationService:
    """The Check servicer; with metrics on, /metrics also reads the gateway's own counters
    (bundle, JWKS, Redis, audit) at scrape time."""
    if trail.metrics is not None:
        trail.metrics.watch(gateway.bundles, gateway.limiter, trail.auditor)
    return AuthorizationService(gateway, trail)


def build_server(
    bundle: CompiledBundle,
    settings: ServiceSettings,
    trail: Trail,
    *,
    watch: BundleWatch | None = None,
    dry_run: tuple[CompiledBundle, BundleWatch | None] | None = None,
) -> PolicyServer:
    """The whole service. ``watch`` hot-reloads the bundle; ``dry_run`` is a candidate
    bundle decided beside it (and reloaded like it), never enforced."""
    if settings.server.metrics_listen is not None and trail.metrics is None:
        trail.metrics = CheckMetrics()
    gateway = build_gateway(bundle, trail, settings.redis)
    reloaders = []
    if watch is not None:
        reloaders.append(_reloader(gateway, watch))
    if dry_run is not None:
        candidate, candidate_watch = dry_run
        gateway.bundles.swap_dry_run(BundleState.from_bundle(candidate))
        if candidate_watch is not None:
            reloaders.append(_reloader(gateway, candidate_watch, dry_run=True))
    return PolicyServer(
        build_servicer(gateway, trail),
        settings.server,
        reloaders,
        answers=build_answers(gateway, trail),
    )


def _reloader(
    gateway: CheckPipeline, watch: BundleWatch, *, dry_run: bool = False
) -> BundleReloader:
    return BundleReloader(
        gateway.bundles,
        watch.source,
        load=watch.load,
        watch=watch.watch,
        interval_seconds=watch.interval_seconds,
        dry_run=dry_run,
        loaded=watch.loaded,
    )
