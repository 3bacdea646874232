"""A bundle after validation and compilation: what the request path reads.

Everything here is built once at load time (patterns compiled, documents pre-rendered,
lookups indexed) and never changes, so a check can hold one ``CompiledBundle`` for its
whole life and a reload is an atomic swap of one reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from policy_service.identity.config import ApiKeyEntry, IssuerConfig
from policy_service.identity.principal import Principal
from policy_service.policy.conditions import Condition
from policy_service.policy.limits import CompiledLimit
from policy_service.policy.responses import ResponsePolicy
from policy_service.policy.targets import CallTargets
from policy_service.policy.webhooks import WebhookPolicy
from policy_service.request.model import UpstreamProtocol

DEFAULT_IDENTITY_HEADER_PREFIX = "x-gateway-"
DEFAULT_API_KEY_HEADER = "x-api-key"
METADATA_PATH_PREFIX = "/.well-known/oauth-protected-resource"
# Argument keys whose values audit events never show, whatever the bundle says.
BUILT_IN_REDACT_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "api_key",
        "apikey",
        "api-key",
        "authorization",
        "cookie",
        "private_key",
        "credentials",
    }
)


class DenialStyle(StrEnum):
    HTTP = "http"  # 403 + WWW-Authenticate insufficient_scope (the MCP spec's path)
    JSONRPC = "jsonrpc"  # 200 + JSON-RPC error: many MCP clients drop the session on non-2xx


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class ClientFilter:
    """Allow and deny lists over a principal's client id and subject. Deny wins."""

    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()

    def admits(self, principal: Principal) -> bool:
        names = (principal.client_id, principal.subject)
        if any(name in self.deny for name in names if name):
            return False
        if not self.allow:
            return True
        return any(name in self.allow for name in names if name)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    targets: CallTargets
    scopes: frozenset[str]
    clients: ClientFilter
    effect: Effect
    condition: Condition | None = None  # the rule's `when`, compiled
    dry_run: bool = False  # recorded, never enforced


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    name: str
    path_prefix: str
    protocol: UpstreamProtocol
    resource: str  # canonical URI, the audience tokens must carry
    denial_style: DenialStyle
    required_scopes: frozenset[str]
    allowed_origins: frozenset[str]
    clients: ClientFilter
    rules: tuple[CompiledRule, ...]
    backend: str | None
    metadata_url: str  # absolute URL of this resource's RFC 9728 document
    metadata_document: bytes  # pre-rendered JSON of that document
    audiences: tuple[str, ...]  # what `aud` may contain for this upstream
    # The rules a call is decided by: `rules` without the dry-run ones.
    enforced_rules: tuple[CompiledRule, ...] = ()
    dry_run_rules: frozenset[str] = frozenset()  # names of the rules that only record
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)  # A2A push webhook URLs
    responses: ResponsePolicy = field(default_factory=ResponsePolicy)  # its answers (MCP only)
    # The bundle's gateway.expose_rule_names, on each upstream because a denial is rendered
    # from what it carries, and it carries its upstream.
    expose_rule_names: bool = False


@dataclass(frozen=True, slots=True)
class AuditPolicy:
    """What audit events record beyond who, what and the decision."""

    include_arguments: bool = False
    redact_keys: frozenset[str] = BUILT_IN_REDACT_KEYS  # lower-case


@dataclass(frozen=True, slots=True)
class CompiledBundle:
    revision: str
    source: str
    issuers: tuple[IssuerConfig, ...]
    api_keys: tuple[ApiKeyEntry, ...]
    upstreams: tuple[UpstreamPolicy, ...]
    identity_header_prefix: str = DEFAULT_IDENTITY_HEADER_PREFIX
    api_key_header: str = DEFAULT_API_KEY_HEADER
    by_name: Mapping[str, UpstreamPolicy] = field(default_factory=dict)
    # Longest prefix first, so /a/b/ wins over /a/.
    by_prefix: tuple[UpstreamPolicy, ...] = ()
    # RFC 9728 metadata path -> document; served without a token.
    metadata_documents: Mapping[str, bytes] = field(default_factory=dict)
    limits: tuple[CompiledLimit, ...] = ()
    audit: AuditPolicy = AuditPolicy()
    # When its verified signature says it was signed; None for a bundle loaded unverified.
    # Rollback protection orders bundles by it (bundles.rollback).
    signed_at: datetime | None = None

    def route(self, path: str, context_extensions: Mapping[str, str]) -> UpstreamPolicy | None:
        """The upstream a request is for: Envoy's per-route tag first, then the path prefix."""
        tagged = context_extensions.get("upstream")
        if tagged is not None:
            # A route tagged with a name this bundle doesn't know must not fall through to a
            # prefix match: the Envoy config and the bundle disagree, so fail closed.
            return self.by_name.get(tagged)
        for upstream in self.by_prefix:
            if path.startswith(upstream.path_prefix):
                return upstream
        return None
