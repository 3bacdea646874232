"""``policy-service serve`` refusing a rollback: an older validly signed bundle copied back.

B2 (signed later) serves; B1 (signed a day earlier, by the same key) put back in its place
is refused on SIGHUP and still refused after a restart, because the floor is kept in the
state file; ``--allow-rollback`` is the explicit way to start with it.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from policy_service.bundles.loader import load_bundle_files, read_bundle
from policy_service.bundles.rollback import Floor, read_floor
from policy_service.bundles.signing import generate_signing_key, sign_bundle
from tests.integration.test_bundle_reload_load import good_text, refusal_lines, scrape, until
from tests.integration.test_bundle_reload_serve import serve_once, start_serve
from tests.support.bundles import write_test_bundle
from tests.support.envoy import free_port
from tests.support.serve import serve_command

T1 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
T2 = T1 + timedelta(days=1)
REFUSAL = (
    "rollback refused: revision B1 signed at 2026-11-21T09:00:00Z is older than revision B2 "
    "signed at 2026-11-22T09:00:00Z, the newest served"
)


async def test_an_older_signed_bundle_is_refused_on_reload_and_across_a_restart(
    tmp_path: Path,
) -> None:
    bundle = write_test_bundle(tmp_path)
    template = bundle.path.read_text()
    key = generate_signing_key()
    public = tmp_path.parent / f"{tmp_path.name}-signing.pub"  # outside the bundle
    public.write_bytes(key.verification_key.public_pem())
    signature = tmp_path / "bundle.yaml.sig"

    def signed(revision: str, when: datetime) -> tuple[bytes, bytes]:
        bundle.path.write_text(good_text(template, revision))
        files = read_bundle(bundle.path)
        load_bundle_files(files, environ={})
        return bundle.path.read_bytes(), sign_bundle(files, key, revision=revision, now=when)

    def put(version: tuple[bytes, bytes]) -> None:
        bundle.path.write_bytes(version[0])
        signature.write_bytes(version[1])

    b1, b2 = signed("B1", T1), signed("B2", T2)
    put(b2)
    state = tmp_path.parent / f"{tmp_path.name}-rollback.json"
    port, metrics_port = free_port(), free_port()
    flags = ("--verify-key", str(public), "--rollback-state", str(state), "--audit-log", "off")
    command = serve_command(
        bundle.path, port, *flags, "--no-watch", "--metrics-listen", f"127.0.0.1:{metrics_port}"
    )
    log = tmp_path.parent / f"{tmp_path.name}-serve.log"
    process = start_serve(command, log)
    try:
        assert read_floor(state) == Floor("B2", T2)
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await scrape(http, metrics_port)).revision == "B2"
            put(b1)  # the old, validly signed bundle copied back into place
            process.send_signal(signal.SIGHUP)
            await until(lambda: bool(refusal_lines(log)), "the reload to be refused")
            after = await scrape(http, metrics_port)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    assert refusal_lines(log)[0].startswith(f"B2: {bundle.path}: {REFUSAL}")
    assert after.revision == "B2"
    assert after.loads == {"ok": 1, "failed": 1}
    assert read_floor(state) == Floor("B2", T2)

    # A restart with B1 still in place: refused, from the floor the state file kept.
    restarted = serve_once(str(bundle.path), "--listen", f"127.0.0.1:{free_port()}", *flags)
    assert restarted.returncode == 1, restarted.stderr
    assert f"{bundle.path}: {REFUSAL}" in restarted.stderr

    # On purpose: --allow-rollback starts with B1, says so, and B1 becomes the floor.
    port = free_port()
    log = tmp_path.parent / f"{tmp_path.name}-allowed.log"
    process = start_serve(serve_command(bundle.path, port, *flags, "--allow-rollback"), log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert (
        "rollback allowed by --allow-rollback: serving revision B1 signed at "
        "2026-11-21T09:00:00Z, older than revision B2 signed at 2026-11-22T09:00:00Z"
    ) in log.read_text()
    assert read_floor(state) == Floor("B1", T1)


def test_rollback_flags_need_a_verification_key(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    result = serve_once(str(bundle.path), "--allow-rollback")
    assert result.returncode == 1
    assert "--allow-rollback needs --verify-key" in result.stderr


def test_a_corrupt_state_file_stops_the_start(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    key = generate_signing_key()
    files = read_bundle(bundle.path)
    load_bundle_files(files, environ={})
    (tmp_path / "bundle.yaml.sig").write_bytes(sign_bundle(files, key, revision="test-1"))
    public = tmp_path.parent / f"{tmp_path.name}-signing.pub"
    public.write_bytes(key.verification_key.public_pem())
    state = tmp_path.parent / f"{tmp_path.name}-rollback.json"
    state.write_text("{")
    result = serve_once(
        str(bundle.path), "--verify-key", str(public), "--rollback-state", str(state)
    )
    assert result.returncode == 1
    assert f"rollback state {state} is corrupt" in result.stderr
