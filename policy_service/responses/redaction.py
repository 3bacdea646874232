"""Secrets in tool results, replaced by ``[redacted:<kind>]`` before the caller sees them.

The built-in detectors look for what leaks most often through tools that read files,
logs and environments: PEM private keys, cloud access keys, JWTs, bearer tokens in text,
and the API-key shapes of the common providers. Each is anchored on a fixed prefix or
structure, so ordinary text rarely matches. What was redacted is reported as kinds and
counts only; the matched text never leaves this module.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from policy_service.policy.responses import RedactionPattern, RedactionPolicy

_BUILT_IN: Final = (
    RedactionPattern(
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"
        ),
    ),
    RedactionPattern("aws_access_key", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")),
    RedactionPattern(
        "aws_secret_key",
        re.compile(
            r"(?i)\baws_?secret_?access_?key\b[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"
        ),
    ),
    RedactionPattern("gcp_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")),
    RedactionPattern(
        "jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
    ),
    RedactionPattern(
        "bearer_token", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{20,}=*(?![A-Za-z0-9._~+/=-])")
    ),
    RedactionPattern(
        "github_token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})\b"),
    ),
    RedactionPattern("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    RedactionPattern(
        "openai_api_key",
        re.compile(r"\bsk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}|[A-Za-z0-9]{48}\b)"),
    ),
    RedactionPattern("anthropic_api_key", re.compile(r"\bsk-ant-[a-z0-9]+-[A-Za-z0-9_-]{32,}")),
    RedactionPattern("stripe_key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b")),
    RedactionPattern("google_oauth_token", re.compile(r"\bya29\.[A-Za-z0-9_-]{20,}")),
)
BUILT_IN_KINDS: Final = tuple(pattern.kind for pattern in _BUILT_IN)


@dataclass(slots=True)
class Redactor:
    """Replaces matches in strings; counts what it replaced, by kind."""

    patterns: tuple[RedactionPattern, ...]
    found: Counter[str]

    @classmethod
    def for_policy(cls, policy: RedactionPolicy) -> Redactor:
        built_in = _BUILT_IN if policy.secrets else ()
        return cls((*built_in, *policy.patterns), Counter())

    def text(self, value: str) -> str:
        for entry in self.patterns:
            value, count = entry.pattern.subn(f"[redacted:{entry.kind}]", value)
            if count:
                self.found[entry.kind] += count
        return value

    def value(self, value: Any) -> Any:
        """Every string inside a JSON value (keys too: a map keyed by secrets leaks them)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            redacted: dict[str, Any] = {}
            for key, item in value.items():
                new_key = self.text(key) if isinstance(key, str) else key
                if new_key in redacted:
                    # A redacted key can equal another (two secrets redacted alike): the
                    # later entry would silently replace the earlier one for the client.
                    new_key = _distinct(new_key, redacted)
                redacted[new_key] = self.value(item)
            return redacted
        return value

    def tool_result(self, result: Any) -> Any:
        """A tools/call result: the text of its content blocks (and of embedded resources),
        and its structured content."""
        if not isinstance(result, dict):
            return result
        redacted = dict(result)
        content = result.get("content")
        if isinstance(content, list):
            redacted["content"] = [self._block(block) for block in content]
        if "structuredContent" in result:
            redacted["structuredContent"] = self.value(result["structuredContent"])
        return redacted

    def _block(self, block: Any) -> Any:
        if not isinstance(block, dict):
            return block
        block = dict(block)
        if isinstance(block.get("text"), str):
            block["text"] = self.text(block["text"])
        resource = block.get("resource")
        if isinstance(resource, dict) and isinstance(resource.get("text"), str):
            block["resource"] = {**resource, "text": self.text(resource["text"])}
        return block


def _distinct(key: str, taken: dict[str, Any]) -> str:
    number = 2
    while f"{key}#{number}" in taken:
        number += 1
    return f"{key}#{number}"
