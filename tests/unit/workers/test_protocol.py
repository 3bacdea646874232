"""What a supervisor tells its workers, and what they answer."""

from __future__ import annotations

import pytest

from policy_service.errors import ConfigError
from policy_service.workers.protocol import (
    WORKER_ENV_VAR,
    Failed,
    Ready,
    WorkerSeat,
    failed_line,
    parse_report,
    ready_line,
    worker_label,
)


def test_a_seat_survives_the_environment() -> None:
    seat = WorkerSeat(2, 4, channel_fd=7, audit_lock_fd=9)
    assert WorkerSeat.from_environ(seat.environ()) == seat
    assert WorkerSeat.from_environ({}) is None
    assert worker_label(seat.environ()) == "worker 2/4"
    assert worker_label({}) is None


@pytest.mark.parametrize(
    "environ",
    [
        {WORKER_ENV_VAR: "yes"},
        {WORKER_ENV_VAR: "3/2", "POLICY_SERVICE_WORKER_CHANNEL_FD": "5"},
        {WORKER_ENV_VAR: "1/2"},
        {WORKER_ENV_VAR: "1/2", "POLICY_SERVICE_WORKER_CHANNEL_FD": "five"},
    ],
)
def test_a_seat_set_by_hand_is_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="not as serve --workers sets it"):
        WorkerSeat.from_environ(environ)


def test_reports_read_back() -> None:
    assert parse_report(ready_line(9464)) == Ready(9464)
    assert parse_report(ready_line(None)) == Ready(None)
    assert parse_report(failed_line("cannot listen\non 1.2.3.4:1")) == Failed(
        "cannot listen on 1.2.3.4:1"
    )
    assert parse_report(b"") == Failed("exited before it was ready")
    assert isinstance(parse_report(b"hello\n"), Failed)
