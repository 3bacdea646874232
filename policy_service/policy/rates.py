"""Parse a bundle's rate text ("600/min", "100/5m") into a count per window."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")
MAX_WINDOW_SECONDS = 7 * 86400


class RateSyntaxError(ValueError):
    """The rate text is not "<count>/<window>"; the message says what to write."""


@dataclass(frozen=True, slots=True)
class Rate:
    count: int  # tokens added per window
    window_seconds: int

    @property
    def per_second(self) -> float:
        return self.count / self.window_seconds

    def __str__(self) -> str:
        return f"{self.count}/{self.window_seconds}s"


def parse_rate(text: str) -> Rate:
    match = _RATE.match(text.lower())
    if match is None:
        raise RateSyntaxError(f"'{text}' is not a rate; write <count>/<window>, e.g. '600/min'")
    count_text, multiplier_text, unit = match.groups()
    # Plurals: "mins", "hours", "days". Never "ms" (milliseconds, not minutes) or "hs".
    if len(unit) > 2 and unit.endswith("s") and unit[:-1] in _UNIT_SECONDS:
        unit = unit[:-1]
    if unit not in _UNIT_SECONDS:
        raise RateSyntaxError(f"'{text}': unknown unit '{unit}'; use s, min, hour or day")
    count = int(count_text)
    multiplier = int(multiplier_text) if multiplier_text else 1
    if count == 0 or multiplier == 0:
        raise RateSyntaxError(f"'{text}': the count and the window must be greater than 0")
    window = multiplier * _UNIT_SECONDS[unit]
    if window > MAX_WINDOW_SECONDS:
        raise RateSyntaxError(f"'{text}': the window must be at most 7 days")
    return Rate(count, window)
