"""``policy-service serve`` reloading: from a URL with ETags, on SIGHUP, and failing loudly
at start, when there is no last good bundle to keep serving."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from policy_service.bundles.archive import pack_bundle
from policy_service.bundles.files import BundleFiles
from policy_service.bundles.loader import load_bundle_files, read_bundle
from policy_service.bundles.signing import BundleSigningKey, generate_signing_key, sign_bundle
from tests.integration.test_audit_concurrency import read_events
from tests.integration.test_bundle_reload_load import (
    Load,
    Service,
    check_answers,
    good_text,
    refusal_lines,
    scrape,
    until,
)
from tests.support.bundle_server import BundleServer
from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.envoy import free_port
from tests.support.serve import serve_command, serving, wait_serving


def archive(bundle: TestBundle, revision: str) -> bytes:
    """The test bundle under ``revision``, with its JWKS file, as a bundle server has it."""
    directory = bundle.path.parent
    files = BundleFiles(entry="bundle.yaml", origin=str(directory), root=directory)
    files.files["bundle.yaml"] = good_text(bundle.path.read_text(), revision).encode()
    load_bundle_files(files)
    return pack_bundle(files)


@pytest.fixture
def server() -> Iterator[BundleServer]:
    running = BundleServer().start()
    yield running
    running.stop()


async def test_a_bundle_from_a_url_is_polled_with_etags(
    tmp_path: Path, server: BundleServer
) -> None:
    bundle = write_test_bundle(tmp_path)
    server.serve(archive(bundle, "A-0"), etag='"a0"')
    port, metrics_port = free_port(), free_port()
    audit_log = tmp_path / "audit.jsonl"
    command = serve_command(
        Path("BUNDLE"),
        port,
        "--audit-log",
        str(audit_log),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--poll-interval",
        "0.1",
    )
    command[command.index("BUNDLE")] = server.url("/bundle.tar.gz")  # a URL is not a Path

    with serving([(port, command)], tmp_path):
        load = Load(port, bundle)
        load.start()
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                service = Service(http, metrics_port, load)
                await service.serving("A-0")
                # Unchanged: the polls are answered 304 and nothing reloads.
                await _until_count(server, 304, 3)
                server.serve(archive(bundle, "B-1"), etag='"b1"')
                await service.serving("B-1")
                await _until_count(server, 304, server.statuses.count(304) + 3)

                # The bundle server fails: refused (once per poll), B-1 keeps serving.
                server.status = 500
                await service.refused(1, serving="B-1")
                server.status = 200
                await _until_count(server, 304, server.statuses.count(304) + 1)
                final = await scrape(http, metrics_port)
        finally:
            await load.stop()

    assert load.errors == []
    assert server.statuses.count(200) == 2  # the first read, and B-1: never the same twice
    assert all("If-None-Match" in seen.headers for seen in server.seen[1:])
    assert final.revision == "B-1"
    assert final.loads["ok"] == 2
    assert final.loads["failed"] >= 1
    check_answers(load.answers, read_events(audit_log), ["A-0", "B-1"])
    log = (tmp_path / "serve-0.log").read_text()
    assert f"bundle: watching {server.url('/bundle.tar.gz')} every 0.1s" in log
    assert refusal_lines(tmp_path / "serve-0.log")[0] == (
        f"B-1: {server.url('/bundle.tar.gz')}: the bundle server answered HTTP status 500"
    )


async def _until_count(server: BundleServer, status: int, count: int) -> None:
    await until(lambda: server.statuses.count(status) >= count, f"{count} answers {status}")


async def test_sighup_reloads_an_unwatched_bundle(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    template = bundle.path.read_text()
    bundle.path.write_text(good_text(template, "A-0"))
    port, metrics_port = free_port(), free_port()
    command = serve_command(
        bundle.path,
        port,
        "--audit-log",
        "off",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--no-watch",
    )
    log_path = tmp_path / "serve.log"
    process = start_serve(command, log_path)  # not serving(): this test signals the process
    try:
        load = Load(port, bundle)
        load.start()
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                service = Service(http, metrics_port, load)
                await service.serving("A-0")
                bundle.path.write_text(good_text(template, "B-1"))
                process.send_signal(signal.SIGHUP)
                await service.serving("B-1")
        finally:
            await load.stop()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    assert load.errors == []
    log = log_path.read_text()
    assert f"bundle: reloading {bundle.path} on SIGHUP only" in log
    assert f"bundle revision A-0 -> B-1 loaded from {bundle.path}" in log


def start_serve(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    wait_serving(int(command[command.index("--listen") + 1].rsplit(":", 1)[1]), process, log)
    return process


def serve_once(*args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` that must exit by itself (with the listener on a free port)."""
    return subprocess.run(
        [sys.executable, "-m", "policy_service", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_broken_first_bundle_ends_the_process(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    bundle.path.write_text(bundle.path.read_text() + "upstreams: [\n")
    result = serve_once(str(bundle.path), "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("policy-service serve: bundle is invalid (1 problem):")
    assert "not valid YAML" in result.stderr


def test_an_unsigned_first_bundle_ends_the_process_when_a_key_is_set(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    public = tmp_path / "key.pub"
    public.write_bytes(generate_signing_key().verification_key.public_pem())
    result = serve_once(
        str(bundle.path), "--listen", f"127.0.0.1:{free_port()}", "--verify-key", str(public)
    )
    assert result.returncode == 1
    assert "is not signed, but a verification key is configured" in result.stderr


def test_an_unreachable_first_url_ends_the_process(server: BundleServer) -> None:
    server.status = 404
    result = serve_once(server.url(), "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert f"{server.url()}: the bundle server answered HTTP status 404" in result.stderr


def test_the_poll_interval_must_be_positive(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    result = serve_once(str(bundle.path), "--poll-interval", "0")
    assert result.returncode == 1
    assert "--poll-interval must be a positive number of seconds" in result.stderr


async def test_serve_rotates_its_signing_key_with_repeated_verify_keys(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    old, new = generate_signing_key(), generate_signing_key()
    template = bundle.path.read_text()
    keys_dir = tmp_path / "keys"  # outside the single-file bundle: not a file it names
    keys_dir.mkdir()
    old_pub, new_pub = keys_dir / "old.pub", keys_dir / "new.pub"
    old_pub.write_bytes(old.verification_key.public_pem())
    new_pub.write_bytes(new.verification_key.public_pem())

    def sign(key: BundleSigningKey, revision: str) -> None:
        bundle.path.write_text(good_text(template, revision))
        files = read_bundle(bundle.path)
        load_bundle_files(files, environ={})
        (tmp_path / "bundle.yaml.sig").write_bytes(sign_bundle(files, key, revision=revision))

    sign(old, "A-0")
    port = free_port()
    both = ("--verify-key", str(old_pub), "--verify-key", str(new_pub))
    log = tmp_path / "serve-0.log"
    command = serve_command(bundle.path, port, *both, "--poll-interval", "0.1")
    with serving([(port, command)], tmp_path):
        await until(lambda: "bundle signatures" in log.read_text(), "the keys line")
        assert (
            f"bundle signatures: verified with 2 key(s): {old.key_id}, {new.key_id}"
            in log.read_text()
        )
        sign(new, "B-1")  # re-signed by the new key: taken while both are trusted
        await until(
            lambda: f"bundle revision A-0 -> B-1 loaded from {bundle.path}" in log.read_text(),
            "the re-signed bundle to load",
        )
    for line in old.verification_key.public_pem().decode().splitlines()[1:-1]:
        assert line not in log.read_text()

    # The old key retired: the new one alone serves the bundle; the old one alone refuses it.
    port = free_port()
    new_only = serve_command(bundle.path, port, "--verify-key", str(new_pub))
    with serving([(port, new_only)], tmp_path):
        pass
    refused = serve_once(
        str(bundle.path), "--listen", f"127.0.0.1:{free_port()}", "--verify-key", str(old_pub)
    )
    assert refused.returncode == 1
    assert (
        f"the bundle was signed by key '{new.key_id}', not by the verification key "
        f"'{old.key_id}'" in refused.stderr
    )
