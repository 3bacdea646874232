"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from policy_service.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock()
