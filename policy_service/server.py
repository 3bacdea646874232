"""The gRPC server: Authorization v3 Check, ExternalProcessor v3 Process (the response
side), health, reflection, graceful stop.

Check never lets an exception reach gRPC: a bug or a fault becomes a 503 denial, so an
error can never read as an allow and Envoy's own ``status_on_error`` stays the answer for
when we are unreachable. Process fails closed the same way: an answer it cannot check
reaches the client as a JSON-RPC error, or the stream fails and Envoy refuses the answer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.context import Context
from opentelemetry.trace import Span

from policy_service.answering import AnswerProcessing, BodyMode, ResponsePipeline
from policy_service.bundles.reload import BundleReloader
from policy_service.decisions.model import Decision, Deny, DenyKind
from policy_service.edge.envoy_in import to_http_request
from policy_service.edge.envoy_out import to_check_response
from policy_service.edge.envoy_proc import (
    body_reply,
    continue_reply,
    headers_reply,
    immediate_reply,
    plan_text_of,
    status_and_headers,
)
from policy_service.otel.spans import mark_internal_error, parent_context
from policy_service.pipeline import CheckPipeline
from policy_service.ratelimits.redis_store import RedisStore
from policy_service.request.model import HttpRequest, UpstreamProtocol, request_id_of
from policy_service.telemetry.audit import AuditFailureMode
from policy_service.telemetry.facts import facts_of
from policy_service.telemetry.metrics import MetricsServer
from policy_service.telemetry.record import CheckRecord
from policy_service.telemetry.trail import Trail

log = logging.getLogger("policy_service.server")

AUTHORIZATION_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
PROCESSOR_SERVICE = external_processor_pb2.DESCRIPTOR.services_by_name[
    "ExternalProcessor"
].full_name
_INTERNAL_DENY = Deny(
    DenyKind.INTERNAL, "internal_error", "the policy service failed; the request was refused"
)
_INTERNAL = to_check_response(_INTERNAL_DENY)
_CANCELLED = Deny(
    DenyKind.INTERNAL,
    "cancelled",
    "Envoy abandoned the check before it was decided (its ext_authz timeout)",
)
_CANCELLED_LOG_INTERVAL_SECONDS = 10.0


class _CancelledChecks:
    """Counts checks Envoy abandoned; one log line per interval, not one per check (they
    come in bursts, when something the checks wait on is slow)."""

    def __init__(self) -> None:
        self.total = 0
        self._unlogged = 0
        self._last_log = -_CANCELLED_LOG_INTERVAL_SECONDS

    def note(self) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= _CANCELLED_LOG_INTERVAL_SECONDS:
            log.warning(
                "%d check(s) abandoned by Envoy before they were decided (its ext_authz "
                "timeout; %d in all); each is audited and counted with reason cancelled",
                self._unlogged,
                self.total,
            )
            self._last_log = now
            self._unlogged = 0


# xds-protos ships no type stubs, so the generated servicer base is Any to mypy.
class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, gateway: CheckPipeline, trail: Trail) -> None:
        self.gateway = gateway
        self.trail = trail
        self._cancelled = _CancelledChecks()

    async def Check(
        self,
        request: external_auth_pb2.CheckRequest,
        context: grpc.aio.ServicerContext[
            external_auth_pb2.CheckRequest, external_auth_pb2.CheckResponse
        ],
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        record = CheckRecord.new()
        try:
            http = to_http_request(request)
            metadata = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if isinstance(value, str)  # "-bin" keys carry bytes; no trace context there
            }
            parent = parent_context(metadata, http.headers)
            with self.trail.check_span(parent) as span:
                try:
                    decided = await self._decide(http, record, span)
                except asyncio.CancelledError:
                    # Envoy gave up (its ext_authz timeout) and cancelled the call while the
                    # check waited on Redis or a key fetch. Nobody reads an answer now, but
                    # the check happened: it is audited, counted and traced as cancelled.
                    self._conclude(span, parent, http, _CANCELLED, record, started)
                    self._cancelled.note()
                    raise
                decision = self._conclude(span, parent, http, decided, record, started)
            return to_check_response(decision, record.decision_id)
        except Exception:
            # Fail closed. The traceback names code, never request content or credentials.
            log.exception("check failed; refusing the request")
            return _INTERNAL

    def _conclude(
        self,
        span: Span,
        parent: Context,
        http: HttpRequest,
        decision: Decision,
        record: CheckRecord,
        started: float,
    ) -> Decision:
        """Audit, count and describe the decision; the one to send (closed audit mode can
        turn an allow it could not record into a refusal)."""
        seconds = time.perf_counter() - started
        facts = facts_of(record)  # derived once: the event, span and metrics read it
        audited = self.trail.audit(span, parent, http, decision, record, facts, seconds)
        if decision is not _CANCELLED:  # abandoned, never decided: nothing to decide again
            # What the policy decided, before an audit failure could turn it into a 503.
            self.trail.record(http, decision, record)
        if not audited and self.trail.auditor.failure_mode is AuditFailureMode.CLOSED:
            decision = _unaudited(http, decision, record)
        self.trail.describe(span, http, decision, record, facts, seconds)
        return decision

    async def _decide(self, http: HttpRequest, record: CheckRecord, span: Span) -> Decision:
        try:
            return await self.gateway.check(http, record)
        except Exception:
            # Still a decision, so it is audited and counted like any other.
            log.exception("check failed; refusing the request")
            mark_internal_error(span)
            return _INTERNAL_DENY


_UNCHECKED_PLAN = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":502,"message":"the gateway could not '
    b'check this answer","data":{"reason":"response_plan_unreadable"}}}'
)


class AnswerProcessorService(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """ext_proc: the answers the check left a plan for, one stream per answer."""

    def __init__(self, answers: ResponsePipeline, trail: Trail | None = None) -> None:
        self.answers = answers
        self.trail = trail or Trail()

    async def Process(
        self,
        requests: AsyncIterator[external_processor_pb2.ProcessingRequest],
        context: grpc.aio.ServicerContext[
            external_processor_pb2.ProcessingRequest, external_processor_pb2.ProcessingResponse
        ],
    ) -> AsyncIterator[external_processor_pb2.ProcessingResponse]:
        processing: AnswerProcessing | None = None
        try:
            async for request in requests:
                phase = request.WhichOneof("request")
                if phase == "response_headers":
                    plan_text = plan_text_of(request)
                    if plan_text is None:
                        # The filter's matcher lets only planned answers through; should one
                        # come without a plan, there is nothing to do to it.
                        yield headers_reply((), skip_body=True)
                        continue
                    span = self.trail.answer_span(_answer_parent(context))
                    try:
                        processing = self.answers.open(plan_text, span)
                    except ValueError:
                        log.exception("an answer's plan could not be read; answer refused")
                        mark_internal_error(span)
                        span.end()
                        yield immediate_reply(502, _UNCHECKED_PLAN, "application/json")
                        return
                    status, headers = status_and_headers(request.response_headers)
                    outcome = await processing.on_headers(status, headers)
                    skip = outcome.body is BodyMode.NONE
                    yield headers_reply(
                        outcome.remove_headers, skip_body=skip, set_headers=outcome.set_headers
                    )
                elif phase == "response_body" and processing is not None:
                    body = request.response_body
                    yield body_reply(processing.on_body(body.body, body.end_of_stream))
                    if body.end_of_stream:
                        finished, processing = processing, None
                        await finished.finish()
                else:
                    yield continue_reply(phase or "response_headers")
        finally:
            if processing is not None:
                # The stream ended early (the client left, Envoy reset it): still recorded.
                await processing.finish()


def _answer_parent(context: grpc.aio.ServicerContext[Any, Any]) -> Context:
    """Envoy's ext_proc span, from the stream's gRPC metadata (Envoy propagates it)."""
    metadata = {
        key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
    }
    return parent_context(metadata, {})


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: clients (Envoy) must present a certificate


@dataclass(frozen=True)
class ServerSettings:
    listen: Sequence[str] = ("127.0.0.1:9001",)
    tls: TlsSettings | None = None
    grace_seconds: float = 10.0
    reflection: bool = True
    metrics_listen: tuple[str, int] | None = None  # host, port of /metrics


class PolicyServer:
    """A built servicer behind a gRPC server (``policy_service.app`` builds both)."""

    def __init__(
        self,
        servicer: AuthorizationService,
        settings: ServerSettings,
        reloaders: Sequence[BundleReloader] = (),
        answers: AnswerProcessorService | None = None,
    ) -> None:
        self.gateway = servicer.gateway
        self.trail = servicer.trail
        if settings.metrics_listen is not None and self.trail.metrics is None:
            raise ValueError("metrics_listen needs a trail with metrics (app.build_trail)")
        # Hot reload of the gateway's bundle (and of a dry-run bundle), started once serving.
        self.reloaders = tuple(reloaders)
        self.settings = settings
        self.metrics_server: MetricsServer | None = None
        # grpcio-health-checking's aio submodule is missing from its type hints.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.ports: list[int] = []
        self._server = grpc.aio.server(
            options=[
                # Several processes may share a port: the kernel spreads connections.
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ]
        )
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, self._server)
        services = [AUTHORIZATION_SERVICE]
        if answers is not None:
            external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
                answers, self._server
            )
            services.append(PROCESSOR_SERVICE)
        self.services = tuple(services)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if settings.reflection:
            names = (*services, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self._server)
        credentials = _credentials(settings.tls)
        for address in settings.listen:
            if credentials is None:
                port = self._server.add_insecure_port(address)
            else:
                port = self._server.add_secure_port(address, credentials)
            if port == 0:
                raise OSError(f"cannot listen on {address}")
            self.ports.append(port)

    async def start(self) -> None:
        await self._server.start()
        await self.gateway.state.jwt.start()
        if self.gateway.bundles.dry_run is not None:
            await self.gateway.bundles.dry_run.jwt.start()
        await _report_store(self.gateway)
        if self.settings.metrics_listen is not None:
            assert self.trail.metrics is not None
            host, port = self.settings.metrics_listen
            self.metrics_server = MetricsServer(self.trail.metrics.registry, host, port)
            log.info("metrics on http://%s:%d/metrics", host, self.metrics_server.port)
        for service in ("", *self.services):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving ext_authz on %s (bundle revision %s)",
            ", ".join(self.settings.listen),
            self.gateway.state.bundle.revision,
        )
        for reloader in self.reloaders:
            reloader.start()

    def reload_now(self) -> None:
        """Look for new bundles at once (SIGHUP)."""
        for reloader in self.reloaders:
            reloader.poke()

    async def stop(self) -> None:
        """Stop taking new checks, let in-flight ones finish within the grace period."""
        # NOT_SERVING first, so health-checking load balancers move away before we close.
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.settings.grace_seconds)
        for reloader in self.reloaders:
            # After the drain: replaced bundles' verifiers may serve checks until then.
            await reloader.stop()
        await self.gateway.state.jwt.aclose()
        if self.gateway.bundles.dry_run is not None:
            await self.gateway.bundles.dry_run.jwt.aclose()
        await self.gateway.limiter.aclose()
        _report_limiter_stats(self.gateway)
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.trail.close()
        log.info("stopped")

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def _report_store(gateway: CheckPipeline) -> None:
    """Say where buckets live. An unreachable Redis is not fatal: each limit fails open or
    closed as its bundle says until Redis answers, and the breaker notices when it does."""
    store = gateway.limiter.store
    if isinstance(store, RedisStore):
        if await store.ping():
            log.info("rate limits: buckets in Redis (key prefix %s)", store.settings.key_prefix)
        else:
            log.warning("rate limits: Redis does not answer yet; limits fail open or closed")
    elif gateway.state.bundle.limits:
        log.info("rate limits: buckets in process (not shared with other replicas)")


def _report_limiter_stats(gateway: CheckPipeline) -> None:
    stats = gateway.limiter.stats
    if not stats.checks:
        return
    line = (
        f"rate limits: {stats.checks} checks, {stats.exceeded} exceeded, "
        f"{stats.failed_open} failed open, {stats.failed_closed} failed closed"
    )
    store = gateway.limiter.store
    if isinstance(store, RedisStore):
        line += (
            f"; redis: {store.stats.takes} takes in {store.stats.round_trips} round trips, "
            f"{store.stats.script_loads} script loads"
        )
    log.info(line)


def _credentials(tls: TlsSettings | None) -> grpc.ServerCredentials | None:
    if tls is None:
        return None
    pair = [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())]
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(
        pair, root_certificates=tls.client_ca_file.read_bytes(), require_client_auth=True
    )


# Called once the server serves, with a function that stops it as SIGTERM would.
ServingHook = Callable[["PolicyServer", Callable[[], None]], None]


async def serve_until_signalled(
    server: PolicyServer, on_serving: ServingHook | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully; on SIGHUP, reload the bundle."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if server.reloaders:
        # The conventional "reload your configuration", watched or not.
        loop.add_signal_handler(signal.SIGHUP, server.reload_now)
    await server.start()
    if on_serving is not None:
        on_serving(server, stop.set)
    await stop.wait()
    log.info("signal received; draining in-flight checks")
    await server.stop()


def _unaudited(http: HttpRequest, decision: Decision, record: CheckRecord) -> Decision:
    """Fail closed on the audit trail: a call nobody can account for does not go through.

    A denial stays the denial it was (refusing it again would tell the client less)."""
    if isinstance(decision, Deny):
        return decision
    upstream = record.upstream
    return Deny(
        DenyKind.INTERNAL,
        "audit_unavailable",
        "the decision could not be recorded; the request was refused",
        upstream=upstream,
        request_id=request_id_of(record.parsed),
        jsonrpc=upstream is not None
        and upstream.protocol is not UpstreamProtocol.HTTP
        and http.method == "POST",
    )
