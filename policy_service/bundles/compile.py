"""The meaning pass: check what a shape-valid bundle says, and compile it.

Every builder appends to one problem list instead of raising, so an author sees all of
their mistakes in one run. Messages name the path and say what to write instead; they are
part of the product (each has a fixture with the message pinned in tests/fixtures/bundles).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from policy_service.bundles.compile_identity import check_scopes, compile_api_keys, compile_issuers
from policy_service.bundles.compile_responses import compile_responses
from policy_service.bundles.files import BundleFiles
from policy_service.bundles.limits import compile_limits
from policy_service.bundles.problems import (
    MCP_TARGET_KEYS,
    NAME,
    Problems,
    check_target_names,
)
from policy_service.errors import BundleError
from policy_service.gen.policy_service.bundle.v1 import bundle_pb2
from policy_service.identity.jwt import canonical_audience
from policy_service.policy.conditions import ConditionSyntaxError, compile_condition
from policy_service.policy.model import (
    BUILT_IN_REDACT_KEYS,
    DEFAULT_API_KEY_HEADER,
    DEFAULT_IDENTITY_HEADER_PREFIX,
    METADATA_PATH_PREFIX,
    AuditPolicy,
    ClientFilter,
    CompiledBundle,
    CompiledRule,
    DenialStyle,
    Effect,
    UpstreamPolicy,
)
from policy_service.policy.targets import CallTargets
from policy_service.policy.webhooks import WebhookPolicy, valid_host_pattern
from policy_service.request.model import UpstreamProtocol

_HEADER_PREFIX = re.compile(r"^[a-z0-9-]{2,40}$")
_MAX_REDACT_KEY_LENGTH = 128


def compile_bundle(
    message: bundle_pb2.Bundle,
    *,
    source: str,
    files: BundleFiles,
    environ: Mapping[str, str],
) -> CompiledBundle:
    problems = Problems(source)
    if message.version != "v1":
        shown = f"'{message.version}'" if message.version else "missing"
        problems.add("version", f"must be 'v1' (got {shown})")

    gateway = message.gateway
    prefix = gateway.identity_header_prefix or DEFAULT_IDENTITY_HEADER_PREFIX
    if not _HEADER_PREFIX.match(prefix):
        problems.add(
            "gateway.identity_header_prefix",
            "must be lower-case letters, digits and '-', like 'x-gateway-'",
        )
    api_key_header = (gateway.api_key_header or DEFAULT_API_KEY_HEADER).lower()
    if api_key_header == "authorization" or api_key_header.startswith(prefix):
        problems.add(
            "gateway.api_key_header",
            "must not be 'authorization' or start with the identity header prefix",
        )
    gateway_origins = _origins(gateway.allowed_origins, "gateway.allowed_origins", problems)

    issuers = compile_issuers(message, files, environ, problems)
    api_keys = compile_api_keys(message, problems)
    issuer_urls = tuple(issuer.issuer for issuer in issuers)
    upstreams = _upstreams(message, issuer_urls, gateway_origins, files, problems)
    declared = {upstream.name for upstream in message.upstreams}
    limits = compile_limits(message.limits, upstreams, declared, problems)
    audit = _audit(message.audit, problems)

    if not message.issuers and not message.api_keys:
        problems.add("issuers", "no issuers and no api_keys: nobody could ever be allowed")
    if problems.items:
        raise BundleError(problems.items)

    by_prefix = tuple(sorted(upstreams, key=lambda up: len(up.path_prefix), reverse=True))
    documents: dict[str, bytes] = {}
    for upstream in upstreams:
        documents[urlsplit(upstream.metadata_url).path] = upstream.metadata_document
    # RFC 9728 root form: unambiguous only when there is exactly one upstream.
    if len(upstreams) == 1:
        documents.setdefault(METADATA_PATH_PREFIX, upstreams[0].metadata_document)
    return CompiledBundle(
        revision=message.revision or "unversioned",
        source=source,
        issuers=issuers,
        api_keys=api_keys,
        upstreams=upstreams,
        identity_header_prefix=prefix,
        api_key_header=api_key_header,
        by_name={upstream.name: upstream for upstream in upstreams},
        by_prefix=by_prefix,
        metadata_documents=documents,
        limits=limits,
        audit=audit,
    )


def _audit(message: bundle_pb2.Audit, problems: Problems) -> AuditPolicy:
    keys = set(BUILT_IN_REDACT_KEYS)
    for index, key in enumerate(message.redact_keys):
        if not 0 < len(key) <= _MAX_REDACT_KEY_LENGTH:
            problems.add(
                f"audit.redact_keys[{index}]",
                f"must be an argument key of 1 to {_MAX_REDACT_KEY_LENGTH} characters",
            )
        keys.add(key.lower())
    return AuditPolicy(message.include_arguments, frozenset(keys))


def _origins(values: object, path: str, problems: Problems) -> frozenset[str]:
    origins: set[str] = set()
    for position, origin in enumerate(list(values)):  # type: ignore[call-overload]
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            problems.add(
                f"{path}[{position}]",
                f"'{origin}' is not an origin; write scheme://host[:port], e.g. https://app.example.com",
            )
            continue
        origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    return frozenset(origins)


def _clients(message: bundle_pb2.ClientList) -> ClientFilter:
    return ClientFilter(frozenset(message.allow), frozenset(message.deny))


def _upstreams(
    message: bundle_pb2.Bundle,
    issuer_urls: tuple[str, ...],
    gateway_origins: frozenset[str],
    files: BundleFiles,
    problems: Problems,
) -> tuple[UpstreamPolicy, ...]:
    if not message.upstreams:
        problems.add("upstreams", "at least one upstream is required")
    compiled: list[UpstreamPolicy] = []
    names: set[str] = set()
    prefixes: set[str] = set()
    for index, upstream in enumerate(message.upstreams):
        path = f"upstreams[{index}]"
        before = len(problems.items)
        if not NAME.match(upstream.name):
            problems.add(f"{path}.name", "must be a short lower-case name like 'fininfo'")
        elif upstream.name in names:
            problems.add(f"{path}.name", f"duplicate upstream name '{upstream.name}'")
        names.add(upstream.name)
        prefix = upstream.path_prefix
        if not (prefix.startswith("/") and prefix.endswith("/")) or "//" in prefix:
            problems.add(f"{path}.path_prefix", "must start and end with '/', like '/fininfo/'")
        elif prefix.startswith("/.well-known/"):
            problems.add(
                f"{path}.path_prefix",
                "must not be under /.well-known/ (discovery documents live there)",
            )
        elif prefix in prefixes:
            problems.add(f"{path}.path_prefix", f"duplicate path_prefix '{prefix}'")
        prefixes.add(prefix)
        try:
            protocol = UpstreamProtocol(upstream.protocol)
        except ValueError:
            problems.add(f"{path}.protocol", "must be one of: mcp, a2a, http")
            protocol = UpstreamProtocol.HTTP
        resource = _canonical_resource(upstream.resource, f"{path}.resource", problems)
        try:
            denial_style = DenialStyle(upstream.denial_style or DenialStyle.HTTP)
        except ValueError:
            problems.add(f"{path}.denial_style", "must be 'http' or 'jsonrpc'")
            denial_style = DenialStyle.HTTP
        if denial_style is DenialStyle.JSONRPC and protocol is UpstreamProtocol.HTTP:
            problems.add(f"{path}.denial_style", "'jsonrpc' needs protocol mcp or a2a")
        required = check_scopes(upstream.required_scopes, f"{path}.required_scopes", problems)
        origins = gateway_origins | _origins(
            upstream.allowed_origins, f"{path}.allowed_origins", problems
        )
        if upstream.backend:
            backend = urlsplit(upstream.backend)
            if backend.scheme not in ("http", "https") or not backend.hostname or not backend.port:
                problems.add(
                    f"{path}.backend", "must be http(s)://host:port, e.g. http://127.0.0.1:9101"
                )
        rules = tuple(
            rule
            for position, raw in enumerate(upstream.rules)
            if (
                rule := _rule(
                    raw, protocol, f"{path}.rules[{position}]", upstream.name, position, problems
                )
            )
        )
        _check_rule_names(upstream.rules, path, problems)
        webhooks = _webhooks(upstream, protocol, f"{path}.push_notifications", problems)
        responses = compile_responses(upstream, protocol, path, files, problems)
        auth_servers = tuple(upstream.authorization_servers) or issuer_urls
        if len(problems.items) > before:
            continue
        scopes_supported = sorted(required.union(*(rule.scopes for rule in rules)))
        metadata_url = _metadata_url(resource)
        document = {
            "resource": resource,
            "resource_name": upstream.name,
            "authorization_servers": list(auth_servers),
            "scopes_supported": scopes_supported,
            "bearer_methods_supported": ["header"],
        }
        compiled.append(
            UpstreamPolicy(
                name=upstream.name,
                path_prefix=prefix,
                protocol=protocol,
                resource=resource,
                denial_style=denial_style,
                required_scopes=required,
                allowed_origins=origins | {_origin_of(resource)},
                clients=_clients(upstream.clients),
                rules=rules,
                backend=upstream.backend or None,
                metadata_url=metadata_url,
                metadata_document=json.dumps(document, separators=(",", ":")).encode(),
                audiences=(resource,),
                enforced_rules=tuple(rule for rule in rules if not rule.dry_run),
                dry_run_rules=frozenset(rule.name for rule in rules if rule.dry_run),
                webhooks=webhooks,
                responses=responses,
                expose_rule_names=message.gateway.expose_rule_names,
            )
        )
    return tuple(compiled)


def _webhooks(
    upstream: bundle_pb2.Upstream, protocol: UpstreamProtocol, path: str, problems: Problems
) -> WebhookPolicy:
    if not upstream.HasField("push_notifications"):
        return WebhookPolicy()
    if protocol is not UpstreamProtocol.A2A:
        problems.add(path, "applies to protocol a2a only (push notifications are A2A's)")
    raw = upstream.push_notifications
    for position, host in enumerate(raw.hosts):
        if not valid_host_pattern(host):
            problems.add(
                f"{path}.hosts[{position}]",
                f"'{host}' is not a lower-case host name like 'hooks.example.com' "
                "(or '*.example.com' for its subdomains)",
            )
    return WebhookPolicy(raw.allow_http, raw.allow_private, tuple(raw.hosts))


def _check_rule_names(rules: Sequence[bundle_pb2.Rule], path: str, problems: Problems) -> None:
    # Denials, audit events, metrics and `explain` name rules: two with one name would
    # make a record ambiguous.
    seen: set[str] = set()
    for position, rule in enumerate(rules):
        if not rule.name:
            continue
        if rule.name in seen:
            problems.add(f"{path}.rules[{position}].name", f"duplicate rule name '{rule.name}'")
        seen.add(rule.name)


def _canonical_resource(value: str, path: str, problems: Problems) -> str:
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        problems.add(
            path,
            "must be the absolute URI clients use for this upstream, "
            "e.g. https://gateway.example.com/fininfo/mcp",
        )
        return value
    if parts.fragment or parts.query:
        problems.add(path, "must not have a query or fragment (RFC 8707 resource identifier)")
    # The verifier's canonical form, so a configured audience and a token's compare alike.
    return canonical_audience(value)


def _origin_of(resource: str) -> str:
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}"


def _metadata_url(resource: str) -> str:
    # RFC 9728 section 3.1: the well-known suffix goes between the host and the path.
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{METADATA_PATH_PREFIX}{parts.path}"


def _rule(
    raw: bundle_pb2.Rule,
    protocol: UpstreamProtocol,
    path: str,
    upstream_name: str,
    position: int,
    problems: Problems,
) -> CompiledRule | None:
    before = len(problems.items)
    targets = {
        "tools": list(raw.tools),
        "resources": list(raw.resources),
        "prompts": list(raw.prompts),
        "methods": list(raw.methods),
        "a2a_methods": list(raw.a2a_methods),
    }
    if not any(targets.values()):
        problems.add(
            path,
            "matches nothing: give at least one of tools, resources, prompts, methods, a2a_methods",
        )
    if protocol is not UpstreamProtocol.MCP:
        for key in MCP_TARGET_KEYS:
            if targets[key]:
                problems.add(
                    f"{path}.{key}",
                    f"can never match: the upstream's protocol is {protocol}, not mcp",
                )
    if protocol is not UpstreamProtocol.A2A and targets["a2a_methods"]:
        problems.add(
            f"{path}.a2a_methods",
            f"can never match: the upstream's protocol is {protocol}, not a2a",
        )
    check_target_names(targets, path, problems)
    try:
        effect = Effect(raw.effect or Effect.ALLOW)
    except ValueError:
        problems.add(f"{path}.effect", "must be 'allow' or 'deny'")
        effect = Effect.DENY
    scopes = check_scopes(raw.scopes, f"{path}.scopes", problems)
    if effect is Effect.DENY and scopes:
        problems.add(
            f"{path}.scopes", "a deny rule takes no scopes: it refuses whatever it matches"
        )
    condition = None
    if raw.HasField("when"):
        try:
            condition = compile_condition(raw.when)
        except ConditionSyntaxError as exc:
            problems.add(f"{path}.when", exc.message)
    if len(problems.items) > before:
        return None
    return CompiledRule(
        name=raw.name or f"{upstream_name}#{position}",
        targets=CallTargets.compile(**targets),
        scopes=scopes,
        clients=_clients(raw.clients),
        effect=effect,
        condition=condition,
        dry_run=raw.dry_run,
    )
