"""RateLimit and RateLimit-Policy fields (IETF draft-ietf-httpapi-ratelimit-headers).

    RateLimit-Policy: "per-client";q=600;w=60, "trades";q=10;w=3600
    RateLimit: "per-client";r=598;t=1, "trades";r=0;t=360

``q``/``w`` are the limit's count per window; ``r`` is what is left now. ``t`` is when the
limit allows more: for an exhausted limit that is its retry delay (so ``Retry-After`` is
never earlier), otherwise the time until its bucket is full again. Only enforced limits are
shown: shadow limits are for the operator, not the client. No partition key is sent, since
it would reveal whose bucket it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from policy_service.ratelimits.limiter import LimitState


def _item(name: str) -> str:
    # Limit names are bundle-validated (lower-case, digits, '_', '.', '-'): a safe sf-string.
    return f'"{name}"'


def ratelimit_headers(states: Sequence[LimitState]) -> tuple[tuple[str, str], ...]:
    shown = [state for state in states if state.limit.enforced]
    if not shown:
        return ()
    policy = ", ".join(
        f"{_item(s.limit.name)};q={s.limit.rate.count};w={s.limit.rate.window_seconds}"
        for s in shown
    )
    current = ", ".join(
        f"{_item(s.limit.name)};r={s.remaining};t={reset_seconds(s)}" for s in shown
    )
    return (("ratelimit-policy", policy), ("ratelimit", current))


def reset_seconds(state: LimitState) -> int:
    milliseconds = state.retry_after_ms if state.exceeded else state.reset_ms
    return math.ceil(milliseconds / 1000)


def retry_after_seconds(milliseconds: float) -> int:
    """Retry-After in whole seconds, never 0: "retry now" would only be refused again."""
    return max(1, math.ceil(milliseconds / 1000))
