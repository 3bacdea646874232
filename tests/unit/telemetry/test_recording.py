"""Recording lines (``serve --record``) through the real servicer: what a line holds, and
that no credential ever reaches one. Assertions read the serialized text, as a reader of
the file would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2

from policy_service.app import build_gateway, build_servicer
from policy_service.telemetry.audit import AuditFailureMode, Auditor
from policy_service.telemetry.recording import SCHEMA, SESSION_PLACEHOLDER, Recorder
from policy_service.telemetry.trail import Trail
from policy_service.testing import MemoryAuditSink, ServicerContext, tool_call_body
from tests.support.bundles import CI_BOT_KEY, TestBundle, write_test_bundle
from tests.support.checks import check_request

V2026 = "2026-07-28"
SESSION = "live-session-7f3a9c"


class Recording:
    def __init__(self, bundle: TestBundle, *, sample: float = 1.0, chance: float = 0.0) -> None:
        self.sink = MemoryAuditSink()
        self.audit = MemoryAuditSink()
        recorder = Recorder(self.sink, "memory", sample=sample, chance=lambda: chance)
        trail = Trail(auditor=Auditor(self.audit, AuditFailureMode.CLOSED), recorder=recorder)
        self.gateway = build_gateway(bundle.bundle, trail)
        self.service = build_servicer(self.gateway, trail)

    async def check(self, **request: Any) -> external_auth_pb2.CheckResponse:
        await self.gateway.state.jwt.start()
        return await self.service.Check(check_request(**request), ServicerContext())

    def text(self) -> str:
        return b"".join(self.sink.lines).decode()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.sink.lines]


def tool_headers(credential: dict[str, str], tool: str = "get_quote") -> dict[str, str]:
    return {
        **credential,
        "content-type": "application/json",
        "mcp-protocol-version": V2026,
        "mcp-method": "tools/call",
        "mcp-name": tool,
        "mcp-session-id": SESSION,
        "cookie": "sid=cookie-secret-1",
        "x-policy-subject": "spoofed-subject",
        "x-forwarded-client-cert": "Hash=abc",
    }


AUDIT_ARGUMENTS = "  include_arguments: true\n  redact_keys: [account_number]\n"
ARGUMENTS = {
    "symbol": "ACME",
    "password": "hunter2-password",
    "nested": {"Account_Number": "acct-99-secret"},
}


async def test_a_line_holds_the_verified_caller_and_no_credential(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path, audit=AUDIT_ARGUMENTS)
    token = bundle.token("fininfo:read", refresh_token="claim-secret-value", tier="gold")
    recording = Recording(bundle)
    await recording.check(
        headers=tool_headers({"authorization": f"Bearer {token}"}),
        body=tool_call_body("get_quote", 7, arguments=ARGUMENTS),
        context_extensions={"upstream": "fininfo"},
    )
    text = recording.text()
    for secret in (token, SESSION, "cookie-secret-1", "hunter2-password", "acct-99-secret"):
        assert secret not in text
    assert "claim-secret-value" not in text  # a claim under a redact key
    for header in ("authorization", "cookie", "x-policy-subject", "x-forwarded-client-cert"):
        assert f'"{header}"' not in text
    (line,) = recording.lines()
    assert line["schema"] == SCHEMA
    assert line["caller"]["subject"] == "alice"
    assert line["caller"]["client_id"] == "test-client"
    assert line["caller"]["issuer"] == "test-idp"
    assert line["caller"]["scopes"] == ["fininfo:read"]
    assert line["caller"]["claims"]["tier"] == "gold"
    assert line["caller"]["claims"]["refresh_token"] == "[redacted]"
    assert line["request"]["headers"]["mcp-session-id"] == SESSION_PLACEHOLDER
    assert line["request"]["headers"]["mcp-name"] == "get_quote"
    assert line["request"]["context_extensions"] == {"upstream": "fininfo"}
    (message,) = [line["request"]["body"]]
    assert message["params"]["arguments"] == {
        "symbol": "ACME",
        "password": "[redacted]",
        "nested": {"Account_Number": "[redacted]"},
    }
    assert line["decided"] == {
        "decision": "allow",
        "reason": "allowed",
        "upstream": "fininfo",
        "rules": ["read"],
    }
    assert line["incomplete"] == ["claims", "redacted_arguments"]


async def test_arguments_are_left_out_unless_the_bundle_audits_them(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    recording = Recording(bundle)
    await recording.check(
        headers=tool_headers({"x-api-key": CI_BOT_KEY}),
        body=tool_call_body("get_quote", 7, arguments=ARGUMENTS),
    )
    text = recording.text()
    assert CI_BOT_KEY not in text
    assert '"x-api-key"' not in text
    assert "ACME" not in text  # not even an argument that is no secret
    (line,) = recording.lines()
    assert line["request"]["body"]["params"] == {"name": "get_quote", "arguments": {}}
    assert line["caller"]["credential"] == "api_key"
    assert line["incomplete"] == ["arguments"]


async def test_a_refused_credential_is_recorded_as_its_failure(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    (tmp_path / "other").mkdir()
    other = write_test_bundle(tmp_path / "other")
    forged = other.token("fininfo:read")  # signed by a key the bundle does not trust
    recording = Recording(bundle)
    await recording.check(
        headers=tool_headers({"authorization": f"Bearer {forged}"}),
        body=tool_call_body("get_quote", 7),
    )
    await recording.check(headers=tool_headers({}), body=tool_call_body("get_quote", 8))
    text = recording.text()
    assert forged not in text
    first, second = recording.lines()
    assert "caller" not in first
    assert first["credential_failure"]["kind"] == "invalid_credential"
    assert first["decided"]["decision"] == "deny"
    assert second["credential_failure"]["reason"] == "missing_credential"


async def test_a_check_refused_before_identity_says_only_which_credential_came(
    tmp_path: Path,
) -> None:
    bundle = write_test_bundle(tmp_path)
    token = bundle.token("fininfo:read")
    recording = Recording(bundle)
    await recording.check(
        path="/nowhere/mcp",
        headers=tool_headers({"authorization": f"Bearer {token}"}),
        body=tool_call_body("get_quote", 7),
    )
    await recording.check(
        headers=tool_headers({"authorization": f"Bearer {token}"}),
        body=b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x", "to',
    )
    assert token not in recording.text()
    routed, malformed = recording.lines()
    assert routed["credential"] == "bearer"
    assert routed["decided"]["reason"] == "no_upstream"
    assert "body" not in malformed["request"]  # not JSON: nothing of it is kept
    assert malformed["incomplete"] == ["body"]


async def test_a_sample_of_checks_is_recorded(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    skipped = Recording(bundle, sample=0.25, chance=0.5)
    taken = Recording(bundle, sample=0.25, chance=0.1)
    for recording in (skipped, taken):
        await recording.check(headers=tool_headers({}), body=tool_call_body("get_quote", 7))
    assert skipped.sink.lines == []
    assert len(taken.sink.lines) == 1
    assert len(skipped.audit.lines) == 1  # the audit trail is not sampled


async def test_a_recording_that_cannot_be_written_changes_no_answer(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    token = bundle.token("fininfo:read")
    recording = Recording(bundle)
    recording.sink.failing = True
    response = await recording.check(
        headers=tool_headers({"authorization": f"Bearer {token}"}),
        body=tool_call_body("get_quote", 7),
    )
    assert response.status.code == 0  # allowed, as without a recording
    recorder = recording.service.trail.recorder
    assert recorder is not None
    assert (recorder.written, recorder.failed) == (0, 1)
