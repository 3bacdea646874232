"""Bundles for tests: a realistic one written next to a JWKS of freshly generated keys."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from policy_service.bundles.loader import load_bundle
from policy_service.gateway.demo_topology import DEMO_UPSTREAMS, FININFO, HELPER, default_peer_ports
from policy_service.identity.apikeys import hash_api_key
from policy_service.identity.signing import SigningKey
from policy_service.policy.model import CompiledBundle

ISSUER = "https://idp.test.example"
GATEWAY = "http://gateway.test.example"
FININFO_RESOURCE = FININFO.resource(GATEWAY)
HELPER_RESOURCE = HELPER.resource(GATEWAY)
CI_BOT_KEY = "ci-bot-key-for-tests-0123456789"

# {fininfo}, {currenttime} and {helper} are each demo upstream's name, path prefix, protocol,
# resource and backend, from the demo topology; what follows each is this bundle's policy.
BUNDLE_TEMPLATE = """\
version: v1
revision: test-1
issuers:
  - name: test-idp
    issuer: {issuer}
    jwks_file: jwks.json
    algorithms: [ES256]
api_keys:
  - id: ci-bot
    sha256: {ci_bot_hash}
    subject: ci-bot
    scopes: [fininfo:read]
upstreams:
{fininfo}    denial_style: {denial_style}
    clients:
      deny: [blocked-client]
    rules:
      - name: session
        methods: [initialize, server/discover, ping, "notifications/*", tools/list,
                  resources/list, prompts/list]
      - name: trading-off-hours
        tools: [halt_*]
        effect: deny
      - name: trade
        tools: [place_trade]
        scopes: [fininfo:trade]
      - name: read
        tools: [get_quote, list_symbols]
        resources: ["fin://*"]
        prompts: [summarize_position]
        scopes: [fininfo:read]
      # The demo tools of the response side (planted secrets, a streamed answer, a large
      # one): a scope of their own, so the read scope's tool list stays as it was.
      - name: notes
        tools: [get_account_notes, stream_report, get_statement]
        scopes: [fininfo:notes]
{fininfo_responses}{currenttime}    required_scopes: [time:read]
    rules:
      - methods: ["*"]
      - tools: ["*"]
{helper}    rules:
      - name: chat
        a2a_methods: [SendMessage, SendStreamingMessage, GetTask, CancelTask]
        scopes: [agent:chat]
"""


@dataclass
class TestBundle:
    __test__ = False  # a fixture type, not a test class

    path: Path
    key: SigningKey
    bundle: CompiledBundle

    def token(
        self,
        *scopes: str,
        audience: str = FININFO_RESOURCE,
        subject: str = "alice",
        client_id: str = "test-client",
        lifetime: int = 300,
        **claims: object,
    ) -> str:
        payload: dict[str, object] = {
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "scope": " ".join(scopes),
            "client_id": client_id,
            **claims,
        }
        return self.key.mint(payload, lifetime_seconds=lifetime)


def write_test_bundle(
    directory: Path,
    *,
    denial_style: str = "http",
    gateway: str = GATEWAY,
    peer_ports: Mapping[str, int] | None = None,
    key: SigningKey | None = None,
    limits: str = "",
    audit: str = "",
    fininfo_responses: str = "",
    extra_files: Mapping[str, str] | None = None,
) -> TestBundle:
    """``limits`` and ``audit`` are YAML blocks (without their key) appended to the bundle;
    ``fininfo_responses`` is the fininfo upstream's ``responses:`` block, indented as its
    keys are (six spaces), and ``extra_files`` are written beside the bundle (pins files).

    The upstreams' backends are the demo peers on loopback, on ``peer_ports`` (by peer name)
    or their default ports.
    """
    ports = default_peer_ports() if peer_ports is None else peer_ports
    entries = {
        u.name: u.bundle_entry(gateway, f"http://127.0.0.1:{ports[u.peer]}") for u in DEMO_UPSTREAMS
    }
    key = key or SigningKey.generate("ES256", kid="test-key-1")
    (directory / "jwks.json").write_text(json.dumps(key.jwks()))
    for name, text in (extra_files or {}).items():
        (directory / name).write_text(text)
    path = directory / "bundle.yaml"
    path.write_text(
        BUNDLE_TEMPLATE.format(
            issuer=ISSUER,
            ci_bot_hash=hash_api_key(CI_BOT_KEY),
            denial_style=denial_style,
            fininfo_responses=f"    responses:\n{fininfo_responses}" if fininfo_responses else "",
            **entries,
        )
        + (f"limits:\n{limits}" if limits else "")
        + (f"audit:\n{audit}" if audit else "")
    )
    return TestBundle(path, key, load_bundle(path))
