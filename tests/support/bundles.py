"""Bundles for tests: a realistic one written next to a JWKS of freshly generated keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from policy_service.bundles.loader import load_bundle
from policy_service.identity.apikeys import hash_api_key
from policy_service.identity.signing import SigningKey
from policy_service.policy.model import CompiledBundle

ISSUER = "https://idp.test.example"
GATEWAY = "http://gateway.test.example"
FININFO_RESOURCE = f"{GATEWAY}/fininfo/mcp"
HELPER_RESOURCE = f"{GATEWAY}/agents/helper"
CI_BOT_KEY = "ci-bot-key-for-tests-0123456789"

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
  - name: fininfo
    path_prefix: /fininfo/
    protocol: mcp
    resource: {gateway}/fininfo/mcp
    backend: http://127.0.0.1:{fininfo_port}
    denial_style: {denial_style}
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
  - name: currenttime
    path_prefix: /currenttime/
    protocol: mcp
    resource: {gateway}/currenttime/mcp
    backend: http://127.0.0.1:{currenttime_port}
    required_scopes: [time:read]
    rules:
      - methods: ["*"]
      - tools: ["*"]
  - name: helper
    path_prefix: /agents/helper/
    protocol: a2a
    resource: {gateway}/agents/helper
    backend: http://127.0.0.1:{helper_port}
    rules:
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
    fininfo_port: int = 9101,
    currenttime_port: int = 9102,
    helper_port: int = 9103,
    key: SigningKey | None = None,
    limits: str = "",
    audit: str = "",
) -> TestBundle:
    """``limits`` and ``audit`` are YAML blocks (without their key) appended to the bundle."""
    key = key or SigningKey.generate("ES256", kid="test-key-1")
    (directory / "jwks.json").write_text(json.dumps(key.jwks()))
    path = directory / "bundle.yaml"
    path.write_text(
        BUNDLE_TEMPLATE.format(
            issuer=ISSUER,
            gateway=gateway,
            ci_bot_hash=hash_api_key(CI_BOT_KEY),
            denial_style=denial_style,
            fininfo_port=fininfo_port,
            currenttime_port=currenttime_port,
            helper_port=helper_port,
        )
        + (f"limits:\n{limits}" if limits else "")
        + (f"audit:\n{audit}" if audit else "")
    )
    return TestBundle(path, key, load_bundle(path))
