"""Prometheus metrics: checks by decision and reason, latency, limits, Redis, JWKS, bundle.

Per-check counters are updated on the request path. Everything that already has a
counter somewhere (the limiter's store errors, Redis round trips, JWKS refreshes, the
auditor, the bundle) is read only when Prometheus scrapes, so it costs checks nothing.

Label values come from the bundle and the protocols, never from the caller: a tool,
resource, prompt or method the bundle does not name is counted as "other", so a client
inventing names cannot grow the series without bound.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from policy_service.decisions.model import Decision
from policy_service.identity.jwt import JwtVerifier
from policy_service.policy.model import CompiledBundle
from policy_service.policy.targets import CallTargets
from policy_service.ratelimits.breaker import BreakerState
from policy_service.ratelimits.limiter import RateLimiter, Verdict
from policy_service.ratelimits.redis_store import RedisStore
from policy_service.request.a2a import A2A_METHODS
from policy_service.request.model import CallKind
from policy_service.telemetry.facts import CheckFacts
from policy_service.telemetry.record import CheckRecord
from policy_service.telemetry.tracing import decision_name

if TYPE_CHECKING:
    from policy_service.telemetry.audit import Auditor


class LoadCounts(Protocol):
    """Bundles put into service and reloads refused, as the pipeline counts them."""

    @property
    def ok(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def loaded_at(self) -> float: ...
    @property
    def failed_at(self) -> float | None: ...


class ServedBundle(Protocol):
    @property
    def bundle(self) -> CompiledBundle: ...
    @property
    def jwt(self) -> JwtVerifier: ...


class Served(Protocol):
    """What /metrics reads at scrape time about the bundles serving checks: the pipeline's
    holder satisfies it, and metrics never import the pipeline (it sits below it)."""

    @property
    def state(self) -> ServedBundle: ...
    @property
    def loads(self) -> LoadCounts: ...


OTHER = "other"  # a name the bundle does not mention
NONE = "none"  # the request named no upstream, method or tool
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# Methods of the MCP specification (every revision the parser knows); with the A2A
# methods and the names a bundle uses, the whole vocabulary of the method label.
MCP_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "tasks/get",
        "tasks/list",
        "tasks/result",
        "tasks/cancel",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
    }
)
_NAMED_KINDS = (CallKind.TOOL, CallKind.RESOURCE, CallKind.PROMPT)


@dataclass(frozen=True, slots=True)
class _Vocabulary:
    """The label values one bundle allows, per upstream."""

    names: dict[str, frozenset[str]]  # upstream -> tool, resource and prompt names
    methods: frozenset[str]

    @classmethod
    def of(cls, bundle: CompiledBundle) -> _Vocabulary:
        shared = [limit.targets for limit in bundle.limits if not limit.upstreams]
        names: dict[str, frozenset[str]] = {}
        methods = set(MCP_METHODS | A2A_METHODS)
        for upstream in bundle.upstreams:
            own = [limit.targets for limit in bundle.limits if upstream.name in limit.upstreams]
            targets = [rule.targets for rule in upstream.rules] + shared + own
            names[upstream.name] = frozenset(_exact_names(targets))
            for each in targets:
                methods |= each.methods.exact | each.a2a_methods.exact
        return cls(names, frozenset(methods))


def _exact_names(targets: Iterable[CallTargets]) -> Iterator[str]:
    for each in targets:
        yield from each.tools.exact
        yield from each.resources.exact
        yield from each.prompts.exact


class CheckMetrics:
    """The per-check counters, and the scrape-time view of the gateway's own counters."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._checks = Counter(
            "policy_service_checks",
            "Checks by decision, reason code, upstream, method and tool.",
            ("decision", "reason", "upstream", "method", "tool"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "policy_service_check_duration_seconds",
            "Time the service spent deciding a check.",
            ("decision",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._limit_checks = Counter(
            "policy_service_ratelimit_checks",
            "Checks that matched rate limits, by verdict "
            "(admitted, exceeded, failed_open, failed_closed).",
            ("verdict",),
            registry=self.registry,
        )
        self._limit_exceeded = Counter(
            "policy_service_ratelimit_exceeded",
            "Limits found exhausted, by limit; shadow limits are counted but never refuse.",
            ("limit", "shadow"),
            registry=self.registry,
        )
        self._dry_runs = Counter(
            "policy_service_dry_run_decisions",
            "Would-be decisions of dry-run rules (rule: its name) and of a bundle in dry run "
            "(rule: none), and whether they agree with the enforced decision.",
            ("source", "rule", "decision", "reason", "agrees"),
            registry=self.registry,
        )
        self._vocabulary: tuple[CompiledBundle, _Vocabulary] | None = None
        # Every check counts into these: labels() validates and locks per call, so each
        # label set's children are looked up once. Label values are bounded (see above).
        self._children: dict[tuple[str, ...], tuple[Counter, Histogram]] = {}
        self._limit_verdicts = {
            verdict: self._limit_checks.labels(verdict.value) for verdict in Verdict
        }

    def observe(
        self, decision: Decision, record: CheckRecord, facts: CheckFacts, seconds: float
    ) -> None:
        name = decision_name(decision)
        labels = (name, decision.reason, *self._call_labels(record, facts))
        children = self._children.get(labels)
        if children is None:
            children = self._children[labels] = (
                self._checks.labels(*labels),
                self._latency.labels(name),
            )
        checks, latency = children
        checks.inc()
        latency.observe(seconds)
        limits = record.limits
        if limits is not None:
            self._limit_verdicts[limits.verdict].inc()
            if limits.verdict is Verdict.EXCEEDED or limits.shadow_exceeded:
                for state in limits.states:
                    if state.exceeded:
                        shadow = "true" if state.limit.shadow else "false"
                        self._limit_exceeded.labels(state.limit.name, shadow).inc()
        for dry_run in record.dry_runs:
            # Rule names come from the bundle; a bundle's revision would grow without bound.
            rule = dry_run.name if dry_run.source == "rule" else NONE
            agrees = "true" if dry_run.agrees else "false"
            self._dry_runs.labels(
                dry_run.source, rule, dry_run.decision, dry_run.reason, agrees
            ).inc()

    def _call_labels(self, record: CheckRecord, facts: CheckFacts) -> tuple[str, str, str]:
        if facts.upstream is None or record.bundle is None:
            return route_tag_label(facts.route_tag), NONE, NONE
        vocabulary = self._vocabulary_of(record.bundle)
        method = _bounded(facts.method, vocabulary.methods) if facts.method else NONE
        names = vocabulary.names.get(facts.upstream, frozenset())
        tool = _bounded(facts.target, names) if facts.target else NONE
        return facts.upstream, method, tool

    def _vocabulary_of(self, bundle: CompiledBundle) -> _Vocabulary:
        cached = self._vocabulary
        if cached is None or cached[0] is not bundle:  # a reload brings new names
            cached = self._vocabulary = (bundle, _Vocabulary.of(bundle))
        return cached[1]

    def watch(self, bundles: Served, limiter: RateLimiter, auditor: Auditor | None = None) -> None:
        """Report the gateway's own counters at scrape time."""
        self.registry.register(_GatewayCollector(bundles, limiter, auditor))


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


_ROUTE_TAG = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def route_tag_label(tag: str | None) -> str:
    """An Envoy route tag that names no upstream, as a label value.

    Tags come from the operator's Envoy config, not from clients, so they are few; the
    shape check keeps an odd one from making a label nobody can query.
    """
    if tag is None:
        return NONE
    return tag if _ROUTE_TAG.fullmatch(tag) else OTHER


class _GatewayCollector(Collector):
    def __init__(self, bundles: Served, limiter: RateLimiter, auditor: Auditor | None) -> None:
        self._gateway = bundles
        self._limiter = limiter
        self._auditor = auditor

    def collect(self) -> Iterable[Metric]:
        gateway = self._gateway
        bundle = GaugeMetricFamily(
            "policy_service_bundle_info", "The bundle serving checks.", labels=("revision",)
        )
        bundle.add_metric((gateway.state.bundle.revision,), 1)
        yield bundle
        loads = CounterMetricFamily(
            "policy_service_bundle_loads",
            "Bundles put into service (the first load, then each reload) and new bundles "
            "refused (the last good one kept serving), by result (ok, failed).",
            labels=("result",),
        )
        loads.add_metric(("ok",), gateway.loads.ok)
        loads.add_metric(("failed",), gateway.loads.failed)
        yield loads
        yield GaugeMetricFamily(
            "policy_service_bundle_loaded_timestamp_seconds",
            "When the serving bundle was loaded (Unix time).",
            value=gateway.loads.loaded_at,
        )
        if gateway.loads.failed_at is not None:
            # Later than the loaded timestamp: the newest bundle was refused, an old one serves.
            yield GaugeMetricFamily(
                "policy_service_bundle_refused_timestamp_seconds",
                "When a new bundle was last refused (Unix time).",
                value=gateway.loads.failed_at,
            )

        refreshes = CounterMetricFamily(
            "policy_service_jwks_refreshes",
            "JWKS fetches by issuer and result (ok, failed: cached keys kept serving).",
            labels=("issuer", "result"),
        )
        for issuer, (ok, failed) in gateway.state.jwt.jwks_refreshes().items():
            refreshes.add_metric((issuer, "ok"), ok)
            refreshes.add_metric((issuer, "failed"), failed)
        yield refreshes

        yield from self._limiter_metrics()
        if self._auditor is not None and self._auditor.enabled:
            events = CounterMetricFamily(
                "policy_service_audit_events",
                "Audit events by result (written, failed).",
                labels=("result",),
            )
            events.add_metric(("written",), self._auditor.written)
            events.add_metric(("failed",), self._auditor.failed)
            yield events

    def _limiter_metrics(self) -> Iterator[Metric]:
        limiter = self._limiter
        errors = CounterMetricFamily(
            "policy_service_ratelimit_store_errors",
            "Times the bucket store did not answer, by reason "
            "(timeout, connection, error, circuit_open).",
            labels=("reason",),
        )
        for reason, count in sorted(limiter.stats.store_errors.items()):
            errors.add_metric((reason,), count)
        yield errors
        breaker = limiter.breaker
        yield GaugeMetricFamily(
            "policy_service_ratelimit_breaker_open",
            "1 while the circuit breaker keeps checks away from the bucket store.",
            value=0 if breaker.state is BreakerState.CLOSED else 1,
        )
        yield CounterMetricFamily(
            "policy_service_ratelimit_breaker_opened",
            "Times the circuit breaker opened.",
            value=breaker.opened_count,
        )
        store = limiter.store
        if isinstance(store, RedisStore):
            for name, help_text, value in (
                ("takes", "Bucket takes sent to Redis.", store.stats.takes),
                ("round_trips", "Round trips to Redis.", store.stats.round_trips),
                ("script_loads", "Script (re)loads after NOSCRIPT.", store.stats.script_loads),
            ):
                yield CounterMetricFamily(f"policy_service_redis_{name}", help_text, value=value)


class MetricsServer:
    """The /metrics endpoint, on its own thread (the Prometheus client's HTTP server)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, host, registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
