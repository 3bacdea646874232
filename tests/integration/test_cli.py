"""The policy-service command as an operator uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from policy_service.identity.apikeys import hash_api_key
from tests.support.bundles import write_test_bundle
from tests.support.envoy import validate_config

INVALID = Path(__file__).parent.parent / "fixtures" / "bundles" / "invalid"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policy_service", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lint_accepts_a_good_bundle(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    result = run("lint", str(bundle.path))
    assert result.returncode == 0, result.stderr
    assert (
        "ok (revision test-1; 3 upstreams, 8 rules, 0 limits, 1 issuers, 1 api keys)"
        in result.stdout
    )


def test_lint_counts_limits(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path, limits="  - name: everyone\n    rate: 100/s\n")
    result = run("lint", str(bundle.path))
    assert result.returncode == 0, result.stderr
    assert "8 rules, 1 limits," in result.stdout


def test_serve_refuses_a_redis_url_that_is_not_redis(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    result = run("serve", str(bundle.path), "--redis-url", "http://user:hunter2@cache:6379")
    assert result.returncode == 1
    assert "must be a redis:// or rediss:// URL" in result.stderr
    assert "hunter2" not in result.stderr  # a password in the URL is never echoed


def test_serve_refuses_a_redis_url_query_it_would_ignore(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    url = "redis://:hunter2@cache:6379/0?socket_timeout=3"
    result = run("serve", str(bundle.path), "--redis-url", url)
    assert result.returncode == 1
    assert "Redis URL: unknown query parameter 'socket_timeout'" in result.stderr
    assert "hunter2" not in result.stderr


def test_serve_refuses_a_key_prefix_that_would_break_the_hash_tag(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    result = run(
        "serve",
        str(bundle.path),
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--redis-key-prefix",
        "a}b",
    )
    assert result.returncode == 1
    assert "--redis-key-prefix" in result.stderr


def test_lint_reports_every_problem_and_fails() -> None:
    fixture = INVALID / "many_problems.yaml"
    result = run("lint", str(fixture))
    assert result.returncode == 1
    assert "bundle is invalid (4 problems):" in result.stderr
    assert f"{fixture}: upstreams[2].name: duplicate upstream name 'clock'" in result.stderr


def test_lint_fails_on_a_bundle_that_loads_but_has_dead_rules() -> None:
    fixture = INVALID.parent / "findings" / "shadowed_rule.yaml"
    result = run("lint", str(fixture))
    assert result.returncode == 1
    assert "loads, but 2 rules will not do what they say:" in result.stderr
    assert f"{fixture}: upstreams[0].rules[1]: rule 'quotes' can never apply" in result.stderr
    assert "ok (" not in result.stdout


def test_hash_key_reads_stdin() -> None:
    result = run("hash-key", stdin="my-secret-key\n")
    assert result.returncode == 0
    assert result.stdout.strip() == hash_api_key("my-secret-key")
    assert "my-secret-key" not in result.stdout


def test_envoy_config_from_a_bundle_validates(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    result = run("envoy-config", str(bundle.path), "--authz", "127.0.0.1:9001")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["static_resources"]["listeners"]
    validate_config(result.stdout)
