"""The fault cases of the JWKS keys and the Redis breaker, under load, with real endpoints.

Not a speed benchmark: it counts what checks got while a dependency misbehaves, so one run
against the code before a fix and one after show the difference. Uses only APIs both have.

    python bench/faults.py                 # all three cases, about 30 s
    python bench/faults.py --case hang     # or: short-cache, redis-stall

hang: a JWKS endpoint that accepts and never answers, while 8 workers check new tokens
(cached kid, and 1 in 10 with an unknown kid); then it answers again with a rotated key.
short-cache: jwks_cache_seconds 2 under a 30 s unknown-kid limit; JWKS requests counted.
redis-stall: a real redis-server paused (SIGSTOP) 0.15 s in every 0.5 s, checks
arriving open-loop (about 1500 a second), store timeout 0.1 s, probe delay 1 s; breaker
transitions counted from its log lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

# tests.support; appended, so that PYTHONPATH can point policy_service at another tree
sys.path.append(str(Path(__file__).resolve().parent.parent))

from policy_service.dev.redis_server import RedisServer
from policy_service.identity.config import IssuerConfig
from policy_service.identity.jwt import JwtVerifier
from policy_service.identity.principal import IdentityFailure
from policy_service.identity.signing import SigningKey
from policy_service.policy.limits import BucketClaim, CompiledLimit, StoreFailureMode
from policy_service.policy.rates import Rate
from policy_service.policy.targets import CallTargets
from policy_service.ratelimits.breaker import CircuitBreaker
from policy_service.ratelimits.limiter import RateLimiter
from policy_service.ratelimits.redis_store import RedisSettings, RedisStore
from tests.support.jwks import JwksServer

ISS = "https://idp.bench"
AUD = "https://mcp.bench/mcp"
ENVOY_TIMEOUT = 1.0  # Envoy's ext_authz timeout: a slower answer is a failed request


def verifier_for(url: str, cache: float, min_refresh: float) -> JwtVerifier:
    config = IssuerConfig(
        name="idp",
        issuer=ISS,
        algorithms=("ES256",),
        jwks_url=url,
        jwks_cache_seconds=cache,
        jwks_min_refresh_seconds=min_refresh,
    )
    # No verified-token cache: every check needs the keys. The default fetch timeout (5 s).
    return JwtVerifier([config], cache_size=0)


def tokens(key: SigningKey, count: int, prefix: str) -> list[str]:
    # A new subject each: the verified-token cache never answers, every check needs the keys.
    return [key.mint({"iss": ISS, "sub": f"{prefix}-{n}", "aud": AUD}) for n in range(count)]


async def load(
    verifier: JwtVerifier, pools: dict[str, list[str]], mix: list[str], seconds: float
) -> dict[str, list[tuple[str, float]]]:
    """8 workers for ``seconds``: each check takes the next token of the next kind in
    ``mix``; returns kind -> [(outcome, latency)]."""
    answers: dict[str, list[tuple[str, float]]] = {kind: [] for kind in pools}
    cursor = dict.fromkeys(pools, 0)
    deadline = time.monotonic() + seconds

    async def worker(index: int) -> None:
        n = index
        while time.monotonic() < deadline:
            kind = mix[n % len(mix)]
            n += 1
            token = pools[kind][cursor[kind] % len(pools[kind])]
            cursor[kind] += 1
            started = time.monotonic()
            result = await verifier.verify(token, [AUD])
            outcome = result.reason if isinstance(result, IdentityFailure) else "allowed"
            answers[kind].append((outcome, time.monotonic() - started))
            await asyncio.sleep(0.005)

    await asyncio.gather(*(worker(i) for i in range(8)))
    return answers


def summary(answers: dict[str, list[tuple[str, float]]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for kind, got in answers.items():
        out[kind] = {
            "checks": len(got),
            "outcomes": dict(Counter(outcome for outcome, _ in got)),
            "worst_ms": round(max((s for _, s in got), default=0) * 1000, 1),
            "over_envoy_timeout": sum(1 for _, s in got if s >= ENVOY_TIMEOUT),
        }
    return out


async def case_hang() -> dict[str, object]:
    key, rotated = SigningKey.generate("ES256", kid="k1"), SigningKey.generate("ES256", kid="k2")
    server = JwksServer()
    server.document = key.jwks()
    # cache 2 s and the unknown-kid limit 2 s too, so that even the code that ties expiry
    # refreshes to that limit refreshes while the endpoint hangs.
    verifier = verifier_for(server.url, cache=2, min_refresh=2)
    try:
        await verifier.start()
        pools = {"cached_kid": tokens(key, 4000, "c"), "unknown_kid": tokens(rotated, 500, "u")}
        server.hang()
        hanging = await load(verifier, pools, ["cached_kid"] * 9 + ["unknown_kid"], 12)
        held = server.hits
        server.document = {"keys": [key.public_jwk(), rotated.public_jwk()]}
        server.answer_again()
        pools = {"rotated_kid": tokens(rotated, 2000, "r")}
        back = await load(verifier, pools, ["rotated_kid"], 4)
        rotated_ok = [
            at for at, (outcome, _) in enumerate(back["rotated_kid"]) if outcome == "allowed"
        ]
        return {
            "while_hanging_12s": summary(hanging),
            "jwks_requests_while_hanging": held - 1,
            "after_it_answers_4s": summary(back),
            "rotated_key_first_allowed_at_check": rotated_ok[0] if rotated_ok else None,
        }
    finally:
        server.stop()
        await verifier.aclose()


async def case_short_cache() -> dict[str, object]:
    key = SigningKey.generate("ES256", kid="k1")
    server = JwksServer()
    server.document = key.jwks()
    verifier = verifier_for(server.url, cache=2, min_refresh=30)
    try:
        await verifier.start()
        answers = await load(verifier, {"cached_kid": tokens(key, 4000, "s")}, ["cached_kid"], 10.5)
        return {
            "jwks_cache_seconds": 2,
            "seconds": 10.5,
            "jwks_requests_after_start": server.hits - 1,
            "expected_about": 5,
            "checks": summary(answers),
        }
    finally:
        server.stop()
        await verifier.aclose()


class Transitions(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "circuit open" in message:
            self.seen.append((record.created, "open"))
        elif "circuit closed" in message:
            self.seen.append((record.created, "closed"))


async def case_redis_stall() -> dict[str, object]:
    limit = CompiledLimit(
        name="lenient",
        rate=Rate(1_000_000, 1),
        burst=1_000_000,
        cost=1,
        key=(),
        upstreams=frozenset(),
        targets=CallTargets(),
        on_store_failure=StoreFailureMode.OPEN,
        shadow=False,
    )
    claims = (BucketClaim(limit, "lenient:global", 1),)
    handler = Transitions()
    logger = logging.getLogger("policy_service.ratelimits")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with RedisServer() as redis_server:
        breaker = CircuitBreaker(failure_threshold=3, open_seconds=1.0, max_open_seconds=4.0)
        limiter = RateLimiter(
            RedisStore(RedisSettings(redis_server.url, timeout_seconds=0.1)), breaker
        )
        verdicts: Counter[str] = Counter()
        slowest = 0.0

        async def one_check() -> None:
            nonlocal slowest
            started = time.monotonic()
            result = await limiter.check(claims)
            slowest = max(slowest, time.monotonic() - started)
            verdicts[str(result.verdict)] += 1

        async def stalls() -> None:
            await asyncio.sleep(0.2)
            for _ in range(10):
                await asyncio.to_thread(redis_server.pause)
                await asyncio.sleep(0.15)
                await asyncio.to_thread(redis_server.resume)
                await asyncio.sleep(0.35)

        # Open-loop arrivals, as from Envoy: a new check does not wait for the last answer.
        running: set[asyncio.Task[None]] = set()
        stalling = asyncio.create_task(stalls())
        try:
            while not stalling.done():
                for _ in range(2):
                    task = asyncio.create_task(one_check())
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.sleep(0.001)
            await stalling
        finally:
            redis_server.resume()
            await asyncio.gather(*running)
            await limiter.aclose()
            logger.removeHandler(handler)
    opens = [at for at, kind in handler.seen if kind == "open"]
    open_for = [
        round(close - opened, 3)
        for (opened, a), (close, b) in zip(handler.seen, handler.seen[1:], strict=False)
        if (a, b) == ("open", "closed")
    ]
    return {
        "seconds": 5.2,
        "checks": sum(verdicts.values()),
        "verdicts": dict(verdicts),
        "worst_ms": round(slowest * 1000, 1),
        "opened": len(opens),
        "closed": len(handler.seen) - len(opens),
        "open_seconds_before_each_close": open_for,
    }


CASES = {"hang": case_hang, "short-cache": case_short_cache, "redis-stall": case_redis_stall}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import policy_service

    results: dict[str, object] = {"code": str(Path(policy_service.__file__).parent)}
    for name in args.case or list(CASES):
        results[name] = await CASES[name]()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
