"""Which list items a caller sees: the call's own rules, with the arguments unknown."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_service.bundles.loader import load_bundle
from policy_service.identity.principal import CredentialKind, Principal
from policy_service.policy.model import UpstreamPolicy
from policy_service.responses.listing import Listing

BUNDLE = """\
version: v1
api_keys:
  - {id: k, sha256: 0b7e3a4d6f1e2c9a8b5d4c3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a,
     subject: k, scopes: [r]}
upstreams:
  - name: files
    path_prefix: /files/
    protocol: mcp
    resource: https://gw.example.com/files/mcp
    required_scopes: [files:use]
    clients: {deny: [banned-app]}
    rules:
      - {name: session, methods: [tools/list, resources/list, resources/templates/list]}
      - {name: no-admin, tools: ["admin_*"], effect: deny}
      - {name: write, tools: [write_file], scopes: [files:write]}
      - name: read-some
        tools: [read_file]
        when: 'args.path.startsWith("/public/")'
      - name: no-secrets-dir
        tools: [list_dir]
        effect: deny
        when: 'args.path.startsWith("/secrets/")'
      - {name: list, tools: [list_dir]}
      - name: gold-only
        tools: [export]
        when: 'claims.tier == "gold"'
      - {name: partners, tools: [partner_sync], clients: {allow: [partner-app]}}
      - {name: docs, resources: ["docs://*"]}
      - {name: later, tools: [beta_tool], dry_run: true}
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> UpstreamPolicy:
    path: Path = tmp_path_factory.mktemp("listing") / "bundle.yaml"
    path.write_text(BUNDLE)
    return load_bundle(path, environ={}).by_name["files"]


def caller(*scopes: str, client: str = "app", **claims: object) -> Principal:
    return Principal("alice", "idp", client, frozenset(scopes), CredentialKind.JWT, claims=claims)


@pytest.mark.parametrize(
    ("who", "tool", "listed"),
    [
        (caller(), "list_dir", False),  # the upstream's required scope is missing
        (caller("files:use"), "write_file", False),  # the rule's scope is missing
        (caller("files:use", "files:write"), "write_file", True),
        (caller("files:use", "files:write"), "admin_reset", False),  # a deny rule decides
        # A condition on the arguments: some arguments may pass, so the tool is listed...
        (caller("files:use"), "read_file", True),
        # ...and a deny rule on some arguments hides nothing (list_dir's own rule allows).
        (caller("files:use"), "list_dir", True),
        # Conditions that read no argument are decided as for the call.
        (caller("files:use", tier="gold"), "export", True),
        (caller("files:use", tier="silver"), "export", False),
        (caller("files:use"), "export", False),  # a failing condition keeps an allow out
        (caller("files:use"), "partner_sync", False),  # the rule's client list
        (caller("files:use", client="partner-app"), "partner_sync", True),
        (caller("files:use", client="banned-app"), "list_dir", False),  # upstream clients
        (caller("files:use"), "no_rule_names_this", False),  # default deny
        (caller("files:use"), "beta_tool", False),  # dry-run rules are never enforced
    ],
)
def test_a_tool_is_listed_exactly_when_the_caller_could_call_it(
    upstream: UpstreamPolicy, who: Principal, tool: str, listed: bool
) -> None:
    assert Listing(upstream, who).may_use("tools/list", tool) is listed


def test_resources_and_templates_are_matched_by_their_uri(upstream: UpstreamPolicy) -> None:
    listing = Listing(upstream, caller("files:use"))
    items = [{"uri": "docs://readme"}, {"uri": "secret://keys"}, {"name": "no uri"}]
    kept, hidden = listing.filter_items("resources/list", items)
    assert kept == [{"uri": "docs://readme"}]
    assert hidden == 2
    templates = [{"uriTemplate": "docs://{page}"}, {"uriTemplate": "secret://{key}"}]
    kept, hidden = listing.filter_items("resources/templates/list", templates)
    assert kept == [{"uriTemplate": "docs://{page}"}]
    assert hidden == 1


def test_items_without_a_readable_name_are_hidden(upstream: UpstreamPolicy) -> None:
    listing = Listing(upstream, caller("files:use"))
    kept, hidden = listing.filter_items(
        "tools/list", [{"name": "list_dir"}, {"name": 7}, "list_dir", {}]
    )
    assert kept == [{"name": "list_dir"}]
    assert hidden == 3
