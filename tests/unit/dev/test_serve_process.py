"""The command the dev stack runs for `dev --workers N`: one the real parser takes."""

from __future__ import annotations

from pathlib import Path

from policy_service.cli.flags import REDIS_URL_ENV_VAR
from policy_service.cli.main import build_parser
from policy_service.dev import serve_process
from policy_service.dev.serve_process import ServeSettings, serve_command
from policy_service.ratelimits.redis_store import RedisSettings


def test_the_child_command_is_serve_with_every_setting_and_no_redis_url() -> None:
    settings = ServeSettings(Path("/state/bundle.yaml"), 3, 9001, 9464, Path("/state/audit.log"))
    redis = RedisSettings(
        url="redis://:secret@127.0.0.1:6379/0", pipeline=True, timeout_seconds=0.2
    )
    command = serve_command(settings, redis)
    assert command[1:3] == ["-m", "policy_service"]
    args = build_parser().parse_args(command[3:])
    assert (args.command, args.bundle, args.workers) == ("serve", "/state/bundle.yaml", 3)
    assert args.listen == ["127.0.0.1:9001"]
    assert args.metrics_listen == "127.0.0.1:9464"
    assert args.audit_log == "/state/audit.log"
    assert (args.redis_pipeline, args.redis_timeout) == (True, 0.2)
    # The URL (a password, maybe) goes through the environment, never the process list.
    assert args.redis_url is None
    assert not any("secret" in part for part in command)
    assert serve_process.REDIS_URL_ENV_VAR == REDIS_URL_ENV_VAR
