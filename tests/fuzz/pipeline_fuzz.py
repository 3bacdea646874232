"""Fuzz the whole request path: CheckRequest in, decision, CheckResponse out.

Generated bodies and header sets (valid calls and mutations of them: flipped bytes, cut
bodies, keys in other cases and twice, deep nesting, huge strings, wrong types, odd
credentials, tokens in queries, spoofed identity headers, unknown route tags) go through
the edge mapping, the pipeline and the answer mapping, as the servicer runs them. Nothing
may raise, and every outcome must be an allow, a denial or a served document.

    python -m tests.fuzz.pipeline_fuzz --count 100000 [--seed N]

CI runs a few thousand of the same cases (tests/unit/test_pipeline_fuzz.py); the long run
is for a developer, and its count and result go in the change's note.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2

from policy_service.decisions.model import Allow, Deny, Serve
from policy_service.edge.envoy_in import to_http_request
from policy_service.edge.envoy_out import to_check_response
from policy_service.pipeline import CheckPipeline
from policy_service.state import BundleState
from tests.support.bundles import CI_BOT_KEY, TestBundle, write_test_bundle
from tests.support.checks import check_request

LIMITS = "  - name: per-client\n    rate: 100000/s\n    key: [client]\n"
PATHS = [
    "/fininfo/mcp",
    "/currenttime/mcp",
    "/agents/helper/",
    "/agents/helper/message:send",
    "/agents/helper/tasks/t1",
    "/agents/helper/tasks/t1/pushNotificationConfigs",
    "/agents/helper/.well-known/agent-card.json",
    "/.well-known/oauth-protected-resource/fininfo/mcp",
    "/lf.a2a.v1.A2AService/SendMessage",
    "/nowhere",
    "/fininfo/../agents/helper/",
]
METHODS = ["POST"] * 8 + ["GET", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH"]
VERSIONS = ["2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28", "2099-01-01", ""]
TOOLS = ["get_quote", "place_trade", "list_symbols", "current_time", "nope", ""]
SCOPES = ["fininfo:read", "fininfo:trade", "time:read", "agent:chat"]
WEIRD = ["", " ", "\t", "\u00a0", "%", "%C3%B1", "\u00f1", "\u212a", "\x00", "\r\n", ",", ";"]
PUSH_URLS = [
    "https://hooks.example.com/x",
    "http://169.254.169.254/",
    "https://127.1/",
    "https://user@10.0.0.1/",
    "https://0x7f000001/",
]


class Fuzzer:
    def __init__(self, bundle: TestBundle, rng: random.Random) -> None:
        self.bundle = bundle
        self.rng = rng
        self.tokens = self._tokens()

    def _tokens(self) -> list[str]:
        token = self.bundle.token
        now = int(time.time())
        return [
            token("fininfo:read"),
            token("fininfo:read", "fininfo:trade", subject="  alice  "),
            token(scope="fininfo:read\tfininfo:trade"),
            token(scope="fininfo:read\u00a0fininfo:trade"),
            token("fininfo:read", iat=now + 365 * 86400),
            token("fininfo:read", subject="bob\u00f1", client_id="c%41"),
            token("agent:chat", audience="http://gateway.test.example/agents/helper"),
            token("time:read", lifetime=-120),
            "not.a.token",
            "e30.e30.",
            "a" * 5000,
        ]

    def request(self) -> external_auth_pb2.CheckRequest:
        if self.rng.random() < 0.25:
            return self.well_formed()
        rng = self.rng
        path = rng.choice(PATHS)
        if rng.random() < 0.2:
            path += rng.choice(["?x=1;access_token=t", "?access_token=t", "?a=b", "?%zz", "?"])
        headers: list[tuple[str, str]] = [("content-type", "application/json")]
        version = rng.choice(VERSIONS)
        if version:
            headers.append(("mcp-protocol-version", version))
        credential = rng.random()
        if credential < 0.55:
            headers.append(("authorization", f"Bearer {rng.choice(self.tokens)}"))
        elif credential < 0.65:
            headers.append(("x-api-key", rng.choice([CI_BOT_KEY, "wrong", CI_BOT_KEY + ","])))
        elif credential < 0.7:
            headers.append(("authorization", rng.choice(["Basic eDp5", "Bearer", "Bearer a,b"])))
            headers.append(("authorization", "Bearer second"))
        for name in ("mcp-method", "mcp-name", "origin", "x-gateway-subject", "a2a-version"):
            if rng.random() < 0.1:
                headers.append((name, rng.choice([*TOOLS, *WEIRD, "tools/call", "1.0"])))
        if rng.random() < 0.05:
            headers.append(("content-type", "application/grpc"))
        extensions = {}
        if rng.random() < 0.3:
            extensions["upstream"] = rng.choice(["fininfo", "helper", "currenttime", "payroll"])
        return check_request(
            method=rng.choice(METHODS),
            path=path,
            headers=headers,
            body=self.body(),
            context_extensions=extensions,
        )

    def well_formed(self) -> external_auth_pb2.CheckRequest:
        """A call a real client makes, at most lightly bent: the allow path gets fuzzed too."""
        rng = self.rng
        call = {
            "jsonrpc": "2.0",
            "id": rng.randrange(1000),
            "method": "tools/call",
            "params": {"name": rng.choice(TOOLS[:3]), "arguments": self.value(2)},
        }
        text = json.dumps(call)
        if rng.random() < 0.3:
            text = self.mutate(text)
        token = self.tokens[0] if rng.random() < 0.7 else rng.choice(self.tokens)
        headers = [
            ("content-type", "application/json"),
            ("mcp-protocol-version", "2025-06-18"),
            ("authorization", f"Bearer {token}"),
        ]
        return check_request(
            path="/fininfo/mcp", headers=headers, body=text.encode("utf-8", "surrogatepass")
        )

    def body(self) -> bytes:
        rng = self.rng
        choice = rng.random()
        if choice < 0.05:
            return b""
        if choice < 0.1:
            return rng.randbytes(rng.randrange(1, 200))
        text = json.dumps(self.document())
        return self.mutate(text).encode("utf-8", "surrogatepass")

    def document(self) -> Any:
        rng = self.rng
        kind = rng.random()
        if kind < 0.5:
            message: dict[str, Any] = {
                "jsonrpc": "2.0",
                "id": rng.choice([1, "a", None, 1.5, True, [1]]),
                "method": rng.choice(["tools/call", "prompts/get", "resources/read", "tools/list"]),
                "params": {"name": rng.choice(TOOLS), "arguments": self.value(3)},
            }
            if rng.random() < 0.2:
                message["params"]["_meta"] = {"traceparent": rng.choice(WEIRD)}
            return [message, dict(message)] if rng.random() < 0.1 else message
        if kind < 0.75:
            config = {"url": rng.choice(PUSH_URLS)}
            return {
                "jsonrpc": "2.0",
                "id": 3,
                "method": rng.choice(
                    ["message/send", "SendMessage", "tasks/pushNotificationConfig/set"]
                ),
                "params": {
                    "message": {"parts": [{"kind": "text", "text": "hi"}]},
                    "configuration": {"pushNotificationConfig": config},
                    "pushNotificationConfig": config,
                    "url": rng.choice(PUSH_URLS),
                },
            }
        return self.value(5)

    def value(self, depth: int) -> Any:
        rng = self.rng
        pick = rng.random()
        if depth <= 0 or pick < 0.4:
            return rng.choice([None, True, 0, -1, 2**70, 1e308, "x", "\u212a", "a" * 300, *WEIRD])
        if pick < 0.7:
            return [self.value(depth - 1) for _ in range(rng.randrange(4))]
        keys = ["name", "Name", "method", "url", "path", "quantity", rng.choice(WEIRD)]
        return {rng.choice(keys): self.value(depth - 1) for _ in range(rng.randrange(4))}

    def mutate(self, text: str) -> str:
        rng = self.rng
        for _ in range(rng.randrange(3)):
            operation = rng.randrange(7)
            if operation == 0 and text:
                position = rng.randrange(len(text))
                text = text[:position] + chr(rng.randrange(0x20, 0x7F)) + text[position + 1 :]
            elif operation == 1:
                text = text[: rng.randrange(len(text) + 1)]  # cut
            elif operation == 2:
                text = text.replace('"name"', rng.choice(['"Name"', '"name", "name": 1, "x"']), 1)
            elif operation == 3:
                text = text.replace(
                    '"method"', rng.choice(['"METHOD"', '"method": "x", "method"']), 1
                )
            elif operation == 4:
                depth = rng.choice([10, 70, 3000])
                text = "[" * depth + text + "]" * depth
            elif operation == 5:
                text = text.replace('"hi"', json.dumps("y" * rng.choice([10, 70000])), 1)
            else:
                text = text.replace("2.0", rng.choice(["1.0", "2", ""]), 1)
        return text


async def run(count: int, seed: int, workdir: Path) -> Counter[str]:
    """Decide ``count`` generated checks; the tally of outcomes, raising on any escape."""
    bundle = write_test_bundle(workdir, limits=LIMITS)
    state = BundleState.from_bundle(bundle.bundle)
    await state.jwt.start()
    gateway = CheckPipeline(state)
    fuzzer = Fuzzer(bundle, random.Random(seed))
    outcomes: Counter[str] = Counter()
    for index in range(count):
        check = fuzzer.request()
        try:
            decision = await gateway.check(to_http_request(check))
            response = to_check_response(decision, "0" * 32)
        except Exception as exc:
            raise AssertionError(f"case {index} (seed {seed}) raised: {check}") from exc
        assert isinstance(decision, Allow | Deny | Serve), decision
        assert response.HasField("ok_response") or response.HasField("denied_response")
        kind = "allow" if isinstance(decision, Allow) else type(decision).__name__.lower()
        outcomes[f"{kind}:{decision.reason}"] += 1
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        outcomes = asyncio.run(run(args.count, args.seed, Path(workdir)))
    seconds = time.perf_counter() - started
    print(f"{args.count} checks, seed {args.seed}, {seconds:.1f} s: no exception escaped")
    for outcome, number in outcomes.most_common():
        print(f"  {number:7d}  {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
