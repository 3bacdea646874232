"""Rollback protection: the floor's order, its state file, and a reload below it refused.

A validly signed bundle signed before the newest one served is refused: by the guard's
check, and so by the reloader, which keeps serving and counts the refusal. The floor lives
in a state file replaced whole; a missing file is no floor, a corrupt one stops the start.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policy_service.bundles.files import BundleFiles
from policy_service.bundles.loader import load_bundle_files, read_bundle
from policy_service.bundles.reload import BundleReloader, ReloadOutcome
from policy_service.bundles.rollback import (
    STATE_DIR_ENV_VAR,
    Floor,
    RollbackGuard,
    RollbackRefused,
    default_state_file,
    read_floor,
    write_floor,
)
from policy_service.bundles.signing import (
    generate_signing_key,
    load_signed_bundle,
    sign_bundle,
    signature_name,
)
from policy_service.errors import ConfigError
from policy_service.pipeline import CheckPipeline
from policy_service.policy.model import CompiledBundle
from policy_service.state import BundleState
from tests.support.bundles import TestBundle, write_test_bundle
from tests.unit.bundles.test_reload import ScriptedSource, loads_total

KEY = generate_signing_key("ed25519")
T1 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
T2 = T1 + timedelta(days=1)


def at(bundle: CompiledBundle, revision: str, signed_at: datetime | None) -> CompiledBundle:
    return dataclasses.replace(bundle, revision=revision, signed_at=signed_at)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> CompiledBundle:
    return write_test_bundle(tmp_path_factory.mktemp("bundle")).bundle


# --- the order -----------------------------------------------------------------------------


def test_an_older_signed_bundle_is_refused_naming_both_revisions_and_times(
    tmp_path: Path, compiled: CompiledBundle
) -> None:
    guard = RollbackGuard(tmp_path / "floor.json", Floor("B2", T2))
    with pytest.raises(RollbackRefused) as refused:
        guard.check(at(compiled, "B1", T1), "bundle.yaml")
    assert str(refused.value.problems[0]) == (
        "bundle.yaml: rollback refused: revision B1 signed at 2026-11-21T09:00:00Z is older "
        "than revision B2 signed at 2026-11-22T09:00:00Z, the newest served (re-sign it, or "
        "restart with --allow-rollback, to roll back on purpose)"
    )


def test_the_same_signing_time_is_not_a_rollback(tmp_path: Path, compiled: CompiledBundle) -> None:
    guard = RollbackGuard(tmp_path / "floor.json", Floor("B2", T2))
    guard.check(at(compiled, "B2", T2), "bundle.yaml")  # the same bundle, reloaded
    guard.check(at(compiled, "B3", T2 + timedelta(seconds=1)), "bundle.yaml")


def test_revisions_are_not_ordered_only_signing_times(
    tmp_path: Path, compiled: CompiledBundle
) -> None:
    # "a" sorts before "z", but it was signed later: an upgrade.
    guard = RollbackGuard(tmp_path / "floor.json", Floor("z-old", T1))
    guard.check(at(compiled, "a-new", T2), "bundle.yaml")


def test_unsigned_bundles_and_no_floor_are_not_guarded(
    tmp_path: Path, compiled: CompiledBundle
) -> None:
    RollbackGuard(tmp_path / "floor.json", Floor("B2", T2)).check(
        at(compiled, "x", None), "bundle.yaml"
    )
    RollbackGuard(tmp_path / "floor.json", None).check(at(compiled, "B1", T1), "bundle.yaml")


def test_accepting_raises_the_floor_and_writes_it_never_lowers_it(
    tmp_path: Path, compiled: CompiledBundle
) -> None:
    state = tmp_path / "state" / "floor.json"  # its folder is made on first write
    guard = RollbackGuard.open(state)
    assert guard.floor is None
    guard.accepted(at(compiled, "B2", T2))
    assert read_floor(state) == Floor("B2", T2)
    guard.accepted(at(compiled, "B1", T1))
    assert guard.floor == Floor("B2", T2)
    assert read_floor(state) == Floor("B2", T2)
    assert RollbackGuard.open(state).floor == Floor("B2", T2)  # what a restart reads


def test_accepting_keeps_a_newer_floor_another_worker_wrote(
    tmp_path: Path, compiled: CompiledBundle
) -> None:
    state = tmp_path / "floor.json"
    guard = RollbackGuard.open(state)
    write_floor(state, Floor("B3", T2 + timedelta(hours=1)))
    guard.accepted(at(compiled, "B2", T2))
    assert read_floor(state) == Floor("B3", T2 + timedelta(hours=1))


def test_allow_rollback_lowers_the_floor_to_the_bundle_started_with(
    tmp_path: Path, compiled: CompiledBundle, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "floor.json"
    write_floor(state, Floor("B2", T2))
    guard = RollbackGuard.open(state)
    with caplog.at_level(logging.WARNING, "policy_service.rollback"):
        guard.allow(at(compiled, "B1", T1))
    assert read_floor(state) == Floor("B1", T1)
    assert caplog.messages == [
        "rollback allowed by --allow-rollback: serving revision B1 signed at "
        "2026-11-21T09:00:00Z, older than revision B2 signed at 2026-11-22T09:00:00Z; the "
        "floor is now this bundle"
    ]


# --- the state file ------------------------------------------------------------------------


def test_a_missing_state_file_is_no_floor(tmp_path: Path) -> None:
    assert read_floor(tmp_path / "absent.json") is None


def test_the_state_file_is_small_json_and_replaced_whole(tmp_path: Path) -> None:
    state = tmp_path / "floor.json"
    write_floor(state, Floor("B1", T1))
    write_floor(state, Floor("B2", T2))
    assert state.read_text() == '{"revision": "B2", "signed_at": "2026-11-22T09:00:00Z"}\n'
    assert [path.name for path in tmp_path.iterdir()] == ["floor.json"]  # no temporary left


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        '{"revision": "B2"}',
        '{"revision": "B2", "signed_at": "yesterday"}',
        '{"revision": "B2", "signed_at": "2026-11-22T09:00:00"}',  # no time zone
        '{"revision": 2, "signed_at": "2026-11-22T09:00:00Z"}',
        '{"revision": "B2", "signed_at": "2026-11-22T09:00:00Z", "extra": 1}',
    ],
)
def test_a_corrupt_state_file_fails_loudly(tmp_path: Path, content: str) -> None:
    state = tmp_path / "floor.json"
    state.write_text(content)
    with pytest.raises(ConfigError) as failed:
        RollbackGuard.open(state)
    assert str(failed.value) == (
        f"rollback state {state} is corrupt (expected a JSON object with exactly 'revision' "
        "and 'signed_at'); fix or remove it, knowing that removing it lets any older signed "
        "bundle load"
    )


def test_a_state_file_that_cannot_be_written_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"rollback state .*floor\.json cannot be written"):
        write_floor(blocker / "floor.json", Floor("B1", T1))


def test_the_default_state_file_is_one_per_bundle_location(tmp_path: Path) -> None:
    environ = {STATE_DIR_ENV_VAR: str(tmp_path)}
    one = default_state_file("bundle.yaml", environ)
    assert one.parent == tmp_path
    assert one == default_state_file(str(Path("bundle.yaml").resolve()), environ)
    assert one != default_state_file("other.yaml", environ)
    xdg = default_state_file("https://b.example/bundle.tar.gz", {"XDG_STATE_HOME": "/x"})
    assert xdg.parent == Path("/x/policy-service")


# --- signed_at comes from the verified signature --------------------------------------------


def test_a_verified_bundle_carries_its_signing_time(tmp_path: Path) -> None:
    path = write_test_bundle(tmp_path).path
    files = read_bundle(path)
    revision = load_bundle_files(files, environ={}).revision
    (path.parent / signature_name(files)).write_bytes(
        sign_bundle(files, KEY, revision=revision, now=T1)
    )
    signed = load_signed_bundle(read_bundle(path), KEY.verification_key, environ={})
    assert signed.signed_at == T1
    assert load_signed_bundle(read_bundle(path), None, environ={}).signed_at is None


# --- a reload below the floor ------------------------------------------------------------


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[TestBundle, CheckPipeline]]:
    bundle = write_test_bundle(tmp_path)
    state = BundleState.from_bundle(at(bundle.bundle, "B2", T2))
    await state.jwt.start()
    gateway = CheckPipeline(state)
    yield bundle, gateway
    await gateway.state.jwt.aclose()


async def test_a_reload_to_an_older_bundle_is_refused_and_counted(
    tmp_path: Path,
    served: tuple[TestBundle, CheckPipeline],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bundle, gateway = served
    guard = RollbackGuard(tmp_path / "floor.json", Floor("B2", T2))
    # As if verified: B1 (older than B2) first, then B3 (newer).
    verified = iter([at(bundle.bundle, "B1", T1), at(bundle.bundle, "B3", T2 + timedelta(hours=1))])

    def load(files: BundleFiles) -> CompiledBundle:
        return next(verified)

    source = ScriptedSource()
    reloader = BundleReloader(
        gateway.bundles, source, load=guard.guarded(load), loaded=guard.accepted
    )
    source.queue.append(read_bundle(bundle.path))
    with caplog.at_level(logging.ERROR, "policy_service.reload"):
        assert await reloader.reload() is ReloadOutcome.REFUSED
    assert gateway.bundles.current.bundle.revision == "B2"
    assert loads_total(gateway, "failed") == 1
    assert "bundle reload refused, still serving revision B2: " in caplog.messages[0]
    assert "rollback refused: revision B1 signed at 2026-11-21T09:00:00Z" in caplog.messages[0]

    source.queue.append(read_bundle(bundle.path))
    assert await reloader.reload() is ReloadOutcome.LOADED
    assert read_floor(tmp_path / "floor.json") == Floor("B3", T2 + timedelta(hours=1))
    await reloader.stop()
