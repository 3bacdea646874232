"""The request path: one check as a pipeline of phases.

    route -> public documents -> origin -> parse -> identity -> authorization
          -> rate limits -> allow

Each phase either hands a value to the next or returns a ``Deny``; nothing raises past
``check`` except a programming error, which the server turns into a fail-closed 503.
All per-bundle state lives in one ``BundleState`` read once per check, so a reload is a
single reference swap and a check always sees one consistent bundle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace

from policy_service.authorization.policy import (
    Granted,
    PolicyOutcome,
    RefusalReason,
    Refused,
    authorize,
)
from policy_service.decisions.model import Allow, Decision, DenialContext, Deny, DenyKind, Serve
from policy_service.decisions.render import rate_limit_code
from policy_service.identity.credentials import (
    AmbiguousCredential,
    CredentialType,
    UnusableCredential,
    extract_credential,
)
from policy_service.identity.header_encoding import encode_header_list, encode_header_value
from policy_service.identity.principal import IdentityFailure, Principal
from policy_service.policy.model import CompiledBundle, UpstreamPolicy
from policy_service.ratelimits.headers import ratelimit_headers, retry_after_seconds
from policy_service.ratelimits.keys import cached_claims_for
from policy_service.ratelimits.limiter import (
    NOTHING_MATCHED,
    RateLimiter,
    RateLimitResult,
    Verdict,
)
from policy_service.ratelimits.store import InProcessStore
from policy_service.request.a2a import is_agent_card_path, parse_a2a
from policy_service.request.jsonbody import parse_json, readable_id
from policy_service.request.mcp import parse_mcp
from policy_service.request.model import (
    A2aRequest,
    HttpRequest,
    Malformed,
    McpRequest,
    UpstreamProtocol,
    request_id_of,
)
from policy_service.responses.guard import AnswerGuard
from policy_service.responses.plan import plan_response
from policy_service.state import BundleState, ServingBundles
from policy_service.telemetry.record import CheckRecord, DryRunRecord
from policy_service.telemetry.tracing import (
    identity_event,
    limit_event,
    policy_event,
)

_NO_CONTEXT = DenialContext()  # before the upstream is known: a plain JSON problem

_REFUSAL_MESSAGES = {
    RefusalReason.CLIENT_NOT_ALLOWED: "this client is not allowed to use this upstream",
    RefusalReason.DENIED_BY_RULE: "the policy denies this call",
    RefusalReason.NO_MATCHING_RULE: "no policy rule allows this call",
    RefusalReason.CONDITION_NOT_MET: "a condition of the policy is not met for this call",
    RefusalReason.CONDITION_ERROR: "a condition of the policy could not be evaluated for this call",
    RefusalReason.INSUFFICIENT_SCOPE: "the token lacks a scope this call needs",
}


class Identity(Protocol):
    """Who is calling: one interface for the request path and for the authoring tools."""

    async def identify(
        self,
        state: BundleState,
        upstream: UpstreamPolicy,
        request: HttpRequest,
        context: DenialContext,
    ) -> Principal | Deny: ...


class RequestCredentials:
    """The request path: the one credential the request carries, verified as a JWT against
    the upstream's audiences or as an API key of the bundle."""

    async def identify(
        self,
        state: BundleState,
        upstream: UpstreamPolicy,
        request: HttpRequest,
        context: DenialContext,
    ) -> Principal | Deny:
        deny = context.deny
        credential = extract_credential(request, state.bundle.api_key_header)
        if credential is None:
            return deny(
                DenyKind.MISSING_CREDENTIAL, "missing_credential", "authentication required"
            )
        if isinstance(credential, AmbiguousCredential):
            return deny(DenyKind.INVALID_REQUEST, credential.reason, credential.message)
        if isinstance(credential, UnusableCredential):
            return deny(DenyKind.INVALID_CREDENTIAL, credential.reason, credential.message)
        if credential.type is CredentialType.BEARER:
            result = await state.jwt.verify(credential.secret, upstream.audiences)
        else:
            result = state.api_keys.verify(credential.secret)
        if isinstance(result, IdentityFailure):
            return deny(
                DenyKind.INVALID_CREDENTIAL, result.reason, "the credential is not valid here"
            )
        return result


@dataclass(frozen=True, slots=True)
class GivenPrincipal:
    """``policy-service test`` and ``explain``: the caller a case names stands in for the
    credential check, and every other phase runs as the service runs it."""

    principal: Principal

    async def identify(
        self,
        state: BundleState,
        upstream: UpstreamPolicy,
        request: HttpRequest,
        context: DenialContext,
    ) -> Principal | Deny:
        return self.principal


REQUEST_CREDENTIALS = RequestCredentials()


class CheckPipeline:
    """Runs checks: one pipeline of phases over whatever bundle ``bundles`` serves."""

    def __init__(
        self,
        state: BundleState | ServingBundles,
        limiter: RateLimiter | None = None,
        identity: Identity = REQUEST_CREDENTIALS,
        guard: AnswerGuard | None = None,
    ) -> None:
        self.bundles = state if isinstance(state, ServingBundles) else ServingBundles(state)
        self.identity = identity
        # Shared with the response side: the sessions it bound, the definitions it saw.
        self.guard = guard or AnswerGuard()
        # The limiter outlives bundles: buckets keep counting across a reload.
        self.limiter = limiter or RateLimiter(InProcessStore())

    @property
    def state(self) -> BundleState:
        return self.bundles.current

    async def check(self, request: HttpRequest, record: CheckRecord | None = None) -> Decision:
        """Decide on ``request``; ``record`` collects what the telemetry reports about it."""
        record = record or CheckRecord.new()
        bundles = self.bundles
        state = bundles.current  # one bundle for the whole check, whatever reloads meanwhile
        decision = await self._decide(state, request, record)
        dry_run_state = bundles.dry_run
        if dry_run_state is not None and not isinstance(decision, Serve):
            shadow = CheckRecord(record.decision_id)
            # No span events and no bucket takes: the dry-run bundle must not change what it
            # observes, and its limits would spend the callers' real budget.
            would = await self._decide(
                dry_run_state, request, shadow, traced=False, enforce_limits=False
            )
            record.dry_runs = (*record.dry_runs, _bundle_dry_run(dry_run_state, would, decision))
        return decision

    async def _decide(
        self,
        state: BundleState,
        request: HttpRequest,
        record: CheckRecord,
        *,
        traced: bool = True,
        enforce_limits: bool = True,
    ) -> Decision:
        bundle = record.bundle = state.bundle

        document = bundle.metadata_documents.get(request.path)
        if document is not None and request.method in ("GET", "HEAD"):
            return Serve(document)

        upstream = bundle.route(request.path, request.context_extensions)
        if upstream is None:
            tag = request.context_extensions.get("upstream")
            if tag is not None:
                record.route_tag = tag
                return _NO_CONTEXT.deny(
                    DenyKind.UNKNOWN_UPSTREAM,
                    "unknown_upstream",
                    "this route's upstream is not in the gateway's policy",
                )
            return _NO_CONTEXT.deny(
                DenyKind.NO_UPSTREAM, "no_upstream", "no upstream serves this path"
            )
        record.upstream = upstream

        is_jsonrpc = upstream.protocol is not UpstreamProtocol.HTTP and request.method == "POST"
        context = DenialContext(upstream, None, is_jsonrpc)
        origin = request.headers.get("origin")
        # ASCII only: str.lower() folds the Kelvin sign to "k", so a non-ASCII Origin could
        # lower-case into an allowed one. Browsers send origins in ASCII (punycode).
        if origin is not None and not (
            origin.isascii() and origin.lower() in upstream.allowed_origins
        ):
            # MCP transports: an Origin that is present and not allowed MUST get 403. The
            # body is read only on this path, to echo the id as every other denial does.
            return context.deny(
                DenyKind.BAD_ORIGIN,
                "origin_not_allowed",
                "this Origin is not allowed",
                request_id=readable_id(parse_json(request.body)) if is_jsonrpc else None,
            )
        if (
            upstream.protocol is not UpstreamProtocol.HTTP
            and request.method != "POST"
            and (request.body or request.body_truncated)
        ):
            # Only POST carries a body in MCP's and A2A's HTTP bindings, so nothing here
            # parses one; an upstream that reads it anyway would run what the policy never
            # saw (a tools/call inside a GET).
            return context.deny(
                DenyKind.MALFORMED,
                "unexpected_body",
                f"a {request.method} request to this endpoint must not carry a body",
            )

        subpath = (
            request.path[len(upstream.path_prefix) - 1 :]
            if request.path.startswith(upstream.path_prefix)
            else request.path
        )
        if (
            upstream.protocol is UpstreamProtocol.A2A
            and request.method in ("GET", "HEAD")
            and is_agent_card_path(subpath)
        ):
            return Allow(
                upstream,
                None,
                "public",
                headers_to_remove=_strip_headers(request, bundle),
            )

        parsed = _parse(upstream, request, subpath)
        if isinstance(parsed, Malformed):
            return context.deny(
                DenyKind.MALFORMED,
                parsed.reason,
                parsed.message,
                request_id=parsed.request_id,
                jsonrpc_code=parsed.jsonrpc_code,
                http_status=parsed.http_status,
            )
        record.parsed = parsed
        context = DenialContext(upstream, request_id_of(parsed), is_jsonrpc)

        # The Check span, when this check is traced: its phases become its events.
        span = trace.get_current_span() if traced else trace.INVALID_SPAN
        recording = span.is_recording()
        started = time.perf_counter() if recording else 0.0
        principal_or_deny = await self.identity.identify(state, upstream, request, context)
        if recording:
            identity_event(span, principal_or_deny, started)
            started = time.perf_counter()
        if isinstance(principal_or_deny, Deny):
            return principal_or_deny
        principal = record.principal = principal_or_deny

        outcome = authorize(upstream, principal, parsed, http=request)
        if upstream.dry_run_rules:
            record.dry_runs = _rule_dry_runs(upstream, principal, parsed, request, outcome)
        if recording:
            policy_event(span, outcome, started)
        if isinstance(outcome, Refused):
            record.condition_failure = outcome.condition_failure
            return _refusal(outcome, context)
        assert isinstance(outcome, Granted)
        if isinstance(parsed, A2aRequest) and parsed.push_urls:
            webhook_refused = _webhook_refusal(upstream, parsed, context)
            if webhook_refused is not None:
                return webhook_refused
        answers = upstream.responses
        if answers.guards and isinstance(parsed, McpRequest):
            guarded = await self.guard.refusal(upstream, parsed, principal, outcome.targets)
            if guarded is not None:
                return context.deny(DenyKind[guarded.kind], guarded.reason, guarded.message)

        limited = NOTHING_MATCHED
        if bundle.limits and enforce_limits:
            started = time.perf_counter() if recording else 0.0
            claims = cached_claims_for(bundle.limits, upstream.name, principal, outcome.targets)
            limited = record.limits = await self.limiter.check(claims)
            if recording:
                limit_event(span, limited, started)
            if limited.verdict is Verdict.EXCEEDED:
                return _rate_limited(limited, parsed, context)
            if limited.verdict is Verdict.FAILED_CLOSED:
                return _store_unavailable(self.limiter, context)

        identity = _identity_headers(principal, bundle.identity_header_prefix, record.decision_id)
        plan = None
        if (answers.methods or answers.sessions.bind) and isinstance(parsed, McpRequest):
            plan = plan_response(
                answers, upstream.name, request.method, parsed, principal, record.decision_id
            )
        return Allow(
            upstream,
            principal,
            "allowed",
            rules=outcome.rules,
            headers_to_set=identity,
            headers_to_remove=_strip_headers(request, bundle, identity),
            response_headers=ratelimit_headers(limited.states),
            response_plan=plan,
        )


def _rule_dry_runs(
    upstream: UpstreamPolicy,
    principal: Principal,
    parsed: McpRequest | A2aRequest | None,
    request: HttpRequest,
    enforced: PolicyOutcome,
) -> tuple[DryRunRecord, ...]:
    """What the policy would decide with the dry-run rules live, when one of them takes
    part in that decision; nothing when none does (the enforced rules decided alone)."""
    would = authorize(upstream, principal, parsed, http=request, rules=upstream.rules)
    if isinstance(would, Granted):
        names = [name for name in would.rules if name in upstream.dry_run_rules]
        if not names:
            return ()
        agrees = isinstance(enforced, Granted)
        return tuple(
            DryRunRecord("rule", name, "allow", "allowed", agrees) for name in dict.fromkeys(names)
        )
    if would.rule not in upstream.dry_run_rules:
        return ()
    agrees = isinstance(enforced, Refused) and enforced.reason is would.reason
    return (
        DryRunRecord("rule", would.rule, "deny", would.reason.value, agrees, would.missing_scopes),
    )


def _bundle_dry_run(state: BundleState, would: Decision, enforced: Decision) -> DryRunRecord:
    decision = "deny" if isinstance(would, Deny) else "allow"
    agrees = type(would) is type(enforced) and would.reason == enforced.reason
    missing = would.missing_scopes if isinstance(would, Deny) else ()
    return DryRunRecord("bundle", state.bundle.revision, decision, would.reason, agrees, missing)


def _parse(
    upstream: UpstreamPolicy, request: HttpRequest, subpath: str
) -> McpRequest | A2aRequest | Malformed | None:
    if upstream.protocol is UpstreamProtocol.MCP:
        return parse_mcp(request)
    if upstream.protocol is UpstreamProtocol.A2A:
        return parse_a2a(request, subpath)
    return None


def _refusal(outcome: Refused, context: DenialContext) -> Deny:
    kind = (
        DenyKind.INSUFFICIENT_SCOPE
        if outcome.reason is RefusalReason.INSUFFICIENT_SCOPE
        else DenyKind.FORBIDDEN
    )
    return context.deny(
        kind,
        outcome.reason.value,
        _REFUSAL_MESSAGES[outcome.reason],
        request_id=outcome.request_id,  # in a batch, the element the policy refused
        required_scopes=outcome.required_scopes,
        missing_scopes=outcome.missing_scopes,
        rule=outcome.rule,
    )


def _rate_limited(
    limited: RateLimitResult, parsed: McpRequest | A2aRequest | None, context: DenialContext
) -> Deny:
    blocking = limited.blocking
    assert blocking is not None
    limit = blocking.limit
    retry_after = retry_after_seconds(blocking.retry_after_ms)
    return context.deny(
        DenyKind.RATE_LIMITED,
        "rate_limited",
        f"rate limit '{limit.name}' exceeded; retry in {retry_after}s",
        jsonrpc_code=rate_limit_code(_mcp_version(parsed)),
        headers=(("retry-after", str(retry_after)), *ratelimit_headers(limited.states)),
        details={
            "limit_name": limit.name,
            "scope": limit.scope,
            "retry_after": retry_after,
            "limit": limit.rate.count,
            "window": limit.rate.window_seconds,
        },
    )


def _store_unavailable(limiter: RateLimiter, context: DenialContext) -> Deny:
    retry_after = retry_after_seconds(limiter.breaker.retry_after_seconds * 1000)
    return context.deny(
        DenyKind.LIMIT_STORE_UNAVAILABLE,
        "rate_limit_unavailable",
        "rate limits cannot be checked right now; the call was refused",
        headers=(("retry-after", str(retry_after)),),
    )


def _webhook_refusal(
    upstream: UpstreamPolicy, parsed: A2aRequest, context: DenialContext
) -> Deny | None:
    """A refusal when a webhook URL the call hands the agent is not one the bundle allows."""
    for url in parsed.push_urls:
        why = upstream.webhooks.refusal(url)
        if why is not None:
            # The URL is the caller's own input: the reason names the rule it broke, and
            # the URL itself stays out of the answer and the logs.
            return context.deny(
                DenyKind.FORBIDDEN, "push_url_not_allowed", f"the push notification URL {why}"
            )
    return None


def _mcp_version(parsed: McpRequest | A2aRequest | None) -> str | None:
    return parsed.protocol_version if isinstance(parsed, McpRequest) else None


def _identity_headers(
    principal: Principal, prefix: str, decision_id: str
) -> tuple[tuple[str, str], ...]:
    # The upstream can log the decision id too: one key joins its logs to ours.
    return ((f"{prefix}decision-id", decision_id), *_principal_headers(principal, prefix))


def _principal_headers(principal: Principal, prefix: str) -> tuple[tuple[str, str], ...]:
    """The headers naming the principal: made once per principal and prefix, and kept on it
    (the verified-token cache holds the principal, so a caller's next check reuses them)."""
    key = ("identity_headers", prefix)
    cached: tuple[tuple[str, str], ...] | None = principal.derived.get(key)
    if cached is not None:
        return cached
    headers = [
        # Claims are the issuer's text: percent-encoded so that distinct values always
        # arrive as distinct header values and nothing on the way can trim or fold them.
        (f"{prefix}subject", encode_header_value(principal.subject)),
        (f"{prefix}issuer", encode_header_value(principal.issuer)),
        (f"{prefix}credential", principal.credential.value),
        (f"{prefix}scopes", encode_header_list(principal.scopes)),
    ]
    if principal.client_id:
        headers.append((f"{prefix}client-id", encode_header_value(principal.client_id)))
    made = principal.derived[key] = tuple(headers)
    return made


def _strip_headers(
    request: HttpRequest, bundle: CompiledBundle, setting: tuple[tuple[str, str], ...] = ()
) -> tuple[str, ...]:
    """Headers the upstream must not see: the client's credentials and any identity header
    the client tried to set itself (spoofing). Headers we set are overwritten rather than
    removed, because Envoy applies removals after additions."""
    prefix = bundle.identity_header_prefix
    ours = {name for name, _ in setting}
    remove = ["authorization", bundle.api_key_header]
    remove.extend(name for name in request.headers if name.startswith(prefix) and name not in ours)
    return tuple(remove)
