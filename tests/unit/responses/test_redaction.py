"""The redaction detectors: each built-in kind found in realistic text, ordinary text left
alone, the bundle's own patterns, and every place a tool result carries text.

The fake secrets are assembled from parts so that secret scanners reading this file see no
key-shaped literal; none of them is a real credential.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from policy_service.policy.responses import RedactionPattern, RedactionPolicy
from policy_service.responses.redaction import BUILT_IN_KINDS, Redactor
from tests.support.bundles import write_test_bundle


def _join(*parts: str) -> str:
    return "".join(parts)


PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nFAKEFAKEFAKE0123456789\n"

# kind -> (a realistic line with the secret in it, the secret itself)
SAMPLES: dict[str, list[str]] = {
    "private_key": [
        _join("-----BEGIN ", "RSA PRIVATE KEY-----\n", PEM_BODY, "-----END RSA PRIVATE KEY-----"),
        _join("-----BEGIN ", "PRIVATE KEY-----\n", PEM_BODY, "-----END PRIVATE KEY-----"),
        _join(
            "-----BEGIN ",
            "OPENSSH PRIVATE KEY-----\n",
            PEM_BODY,
            "-----END OPENSSH ",
            "PRIVATE KEY-----",
        ),
        _join(
            "-----BEGIN ",
            "PGP PRIVATE KEY BLOCK-----\n",
            PEM_BODY,
            "-----END PGP PRIVATE KEY BLOCK-----",
        ),
    ],
    "aws_access_key": [_join("AKIA", "IOSFODNN7EXAMPLE"), _join("ASIA", "Y34FZKBOKMUTVV7A")],
    "aws_secret_key": [
        _join("aws_secret_access_key = ", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        # The label goes with the value: it says what the value was. Quoted as in JSON:
        _join('AWS_SECRET_ACCESS_KEY": "', "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ],
    "gcp_api_key": [_join("AIza", "SyA-FAKE0123456789abcdefghijklmnopq")],
    "jwt": [
        _join(
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.",
            "eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0.",
            "c2lnbmF0dXJlLWZha2UtZmFrZS1mYWtl",
        )
    ],
    "bearer_token": [
        _join("Bearer ", "abcdef0123456789ABCDEF0123456789"),
        _join("bearer ", "dGhpcyBpcyBhIGZha2UgdG9rZW4.x-y_z~+/=="),
    ],
    "github_token": [
        _join("ghp_", "FAKE0123456789abcdefghijklmnopqrstuv"),
        _join(
            "github_pat_",
            "11FAKE0123456789",
            "_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW",
        ),
    ],
    "slack_token": [_join("xox", "b-123456789012-1234567890123-FAKEFAKEFAKEFAKE")],
    "openai_api_key": [
        _join("sk-", "proj-", "FAKE0123456789abcdefghijklmnopqrstuvwxyzABCDEF"),
        _join("sk-", "FAKE0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH"),
    ],
    "anthropic_api_key": [_join("sk-", "ant-api03-", "FAKE0123456789abcdefghijklmnopqrstuv-_xyz")],
    "stripe_key": [
        _join("sk_", "live_", "FAKE0123456789abcdef"),
        _join("rk_", "test_", "FAKE0123456789abcdef"),
    ],
    "google_oauth_token": [_join("ya29", ".", "a0AfFAKE0123456789abcdefghij")],
}
CASES = [(kind, secret) for kind, secrets in SAMPLES.items() for secret in secrets]

# Text that looks a little like a secret and must come through unchanged.
ORDINARY = [
    "request 123e4567-e89b-12d3-a456-426614174000 was retried",  # a UUID
    "fixed in 9fceb02d0ae598e95dc970b74767f19372d61af8",  # a git SHA-1
    "blob 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",  # SHA-256
    base64.b64encode(b"The quick brown fox jumps over the lazy dog, twice over.").decode(),
    base64.urlsafe_b64encode(b'{"type":"report","pages":12}').decode(),  # one JSON segment
    "Sadly, I am the bearer of bad news: the bearer bonds are gone.",
    "Authorization: Bearer <token>",
    "the AKIA prefix marks AWS access key ids; AKIAEXAMPLE is too short",
    "risk_test_results and desk_live_feed are column names",
    "pip install scikit-learn; sk-learn is not a key",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
    "aws_secret_access_key = <set me>",
]


def _redactor(*patterns: RedactionPattern, secrets: bool = True) -> Redactor:
    return Redactor.for_policy(RedactionPolicy(secrets=secrets, patterns=patterns))


def test_every_built_in_kind_has_a_sample() -> None:
    assert set(SAMPLES) == set(BUILT_IN_KINDS)


@pytest.mark.parametrize(("kind", "secret"), CASES)
def test_each_built_in_kind_is_found_in_realistic_text(kind: str, secret: str) -> None:
    redactor = _redactor()
    text = f"2026-01-05 12:00:01 INFO config value {secret}\nnext line"

    redacted = redactor.text(text)

    assert redacted == text.replace(secret, f"[redacted:{kind}]")
    assert dict(redactor.found) == {kind: 1}


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_left_alone(text: str) -> None:
    redactor = _redactor()

    assert redactor.text(text) == text
    assert not redactor.found


def test_an_unterminated_private_key_is_redacted_to_the_end() -> None:
    # A key cut off by a truncated log still leaks its first lines: fail closed.
    redactor = _redactor()
    text = _join("key:\n-----BEGIN ", "EC PRIVATE KEY-----\n", PEM_BODY)

    assert redactor.text(text) == "key:\n[redacted:private_key]"


def test_each_occurrence_is_counted() -> None:
    redactor = _redactor()
    aws = SAMPLES["aws_access_key"][0]

    redacted = redactor.text(f"{aws} and {aws}, then {SAMPLES['jwt'][0]}")

    assert (
        redacted == "[redacted:aws_access_key] and [redacted:aws_access_key], then [redacted:jwt]"
    )
    assert dict(redactor.found) == {"aws_access_key": 2, "jwt": 1}


def test_bundle_patterns_are_redacted_and_built_ins_can_be_turned_off() -> None:
    employee = RedactionPattern("employee_id", re.compile(r"EMP-[0-9]{6}"))
    redactor = _redactor(employee, secrets=False)
    aws = SAMPLES["aws_access_key"][0]

    redacted = redactor.text(f"owner EMP-204817, key {aws}, ticket EMP-12")

    assert redacted == f"owner [redacted:employee_id], key {aws}, ticket EMP-12"
    assert dict(redactor.found) == {"employee_id": 1}


def test_the_bundle_compiles_its_patterns_beside_the_built_ins(tmp_path: Path) -> None:
    responses = (
        "      redact:\n        patterns:\n          - {name: employee_id, regex: 'EMP-[0-9]{6}'}\n"
    )
    bundle = write_test_bundle(tmp_path, fininfo_responses=responses).bundle
    redactor = Redactor.for_policy(bundle.by_name["fininfo"].responses.redact)

    redacted = redactor.text(f"EMP-204817 {SAMPLES['jwt'][0]}")

    assert redacted == "[redacted:employee_id] [redacted:jwt]"


def test_a_tool_result_is_redacted_in_text_structured_content_and_embedded_resources() -> None:
    redactor = _redactor()
    aws, jwt = SAMPLES["aws_access_key"][0], SAMPLES["jwt"][0]
    github = SAMPLES["github_token"][0]
    result = {
        "content": [
            {"type": "text", "text": f"key {aws}"},
            {
                "type": "resource",
                "resource": {"uri": "file:///etc/app.env", "mimeType": "text/plain", "text": jwt},
            },
            {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
        ],
        "structuredContent": {"nested": [{"token": github}], "count": 3, "ok": True, "none": None},
        "isError": False,
    }

    redacted = redactor.tool_result(result)

    assert redacted == {
        "content": [
            {"type": "text", "text": "key [redacted:aws_access_key]"},
            {
                "type": "resource",
                "resource": {
                    "uri": "file:///etc/app.env",
                    "mimeType": "text/plain",
                    "text": "[redacted:jwt]",
                },
            },
            {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
        ],
        "structuredContent": {
            "nested": [{"token": "[redacted:github_token]"}],
            "count": 3,
            "ok": True,
            "none": None,
        },
        "isError": False,
    }
    assert dict(redactor.found) == {"aws_access_key": 1, "jwt": 1, "github_token": 1}
    assert result["content"][0]["text"] == f"key {aws}"  # the input is not changed in place


def test_keys_of_maps_are_redacted_and_never_merged() -> None:
    # A map keyed by secrets leaks them; two keys redacted alike must both stay.
    redactor = _redactor()
    first, second = SAMPLES["aws_access_key"]

    redacted = redactor.value({first: "admin", second: "read-only", "plain": "x"})

    assert redacted == {
        "[redacted:aws_access_key]": "admin",
        "[redacted:aws_access_key]#2": "read-only",
        "plain": "x",
    }
    assert dict(redactor.found) == {"aws_access_key": 2}


def test_a_result_that_is_not_an_object_passes_unchanged() -> None:
    redactor = _redactor()

    assert redactor.tool_result(["not", "a", "result"]) == ["not", "a", "result"]
    assert redactor.tool_result({"content": "not a list"}) == {"content": "not a list"}
    assert not redactor.found
