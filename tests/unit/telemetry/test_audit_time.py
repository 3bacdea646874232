"""The audit event's timestamp: RFC 3339 in UTC with microseconds, exactly as datetime says."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service.telemetry.audit_event import rfc3339


def reference(epoch_seconds: float) -> str:
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}Z"


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_cached_formatting_agrees_with_datetime_to_the_microsecond(epoch: float) -> None:
    assert rfc3339(epoch) == reference(epoch)


def test_a_fraction_that_rounds_up_carries_into_the_next_second() -> None:
    assert rfc3339(1_700_000_000.9999999) == "2023-11-14T22:13:21.000000Z"
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000000Z"
