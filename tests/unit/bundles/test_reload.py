"""The reloader with an in-process gateway: good bundles swap in, bad ones are refused.

A refused bundle leaves the serving one answering, counts in ``loads.failed`` and logs one
ERROR line with the reason. A reload keeps the JWKS keys already fetched: with the identity
provider down during the reload, tokens still verify and nothing is refetched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from policy_service.bundles.files import BundleFiles
from policy_service.bundles.loader import load_bundle_files
from policy_service.bundles.reload import BundleReloader, ReloadOutcome, bundle_loader
from policy_service.decisions.model import Allow, Deny
from policy_service.errors import BundleError, BundleProblem
from policy_service.identity.jwks import UrlKeySource
from policy_service.identity.jwt import JwtVerifier
from policy_service.identity.principal import Principal
from policy_service.pipeline import CheckPipeline
from policy_service.policy.model import CompiledBundle
from policy_service.request.model import HttpRequest
from policy_service.state import BundleState
from policy_service.telemetry.metrics import CheckMetrics
from policy_service.testing import FakeClock, FakeJwksFetcher, mcp_request, tool_call_body
from tests.support.bundles import FININFO_RESOURCE, TestBundle, write_test_bundle

JWKS_URL = "https://idp.test.example/jwks"
LOCATION = "scripted-source"


class ScriptedSource:
    """A bundle source that hands out what the test queued, one item per poll."""

    location = LOCATION
    default_interval_seconds = 0.01

    def __init__(self) -> None:
        self.queue: list[BundleFiles | Exception | None] = []
        self.accepted_files: list[BundleFiles] = []
        self.polls = 0
        self.settled: list[bool] = []

    async def read(self) -> BundleFiles:
        raise AssertionError("the reloader never reads: the first load is the caller's")

    async def poll(self, *, settled: bool = False) -> BundleFiles | None:
        self.polls += 1
        self.settled.append(settled)
        item = self.queue.pop(0) if self.queue else None
        if isinstance(item, Exception):
            raise item
        return item

    def accepted(self, files: BundleFiles) -> None:
        self.accepted_files.append(files)


def snapshot(directory: Path, text: str) -> BundleFiles:
    """A single-file snapshot as ``read_bundle_path`` makes it: the named files on demand."""
    files = BundleFiles(entry="bundle.yaml", origin=str(directory / "bundle.yaml"), root=directory)
    files.files["bundle.yaml"] = text.encode()
    return files


def revised(bundle: TestBundle, revision: str, *, get_quote: bool = True) -> str:
    """The test bundle under another revision; without get_quote, that tool is not allowed."""
    text = bundle.path.read_text().replace("revision: test-1", f"revision: {revision}")
    if not get_quote:
        text = text.replace("tools: [get_quote, list_symbols]", "tools: [list_symbols]")
    return text


def get_quote(token: str) -> HttpRequest:
    return mcp_request(tool_call_body("get_quote", 1), token=token)


@dataclasses.dataclass
class Rig:
    bundle: TestBundle
    gateway: CheckPipeline
    source: ScriptedSource
    reloader: BundleReloader
    directory: Path

    async def allows_get_quote(self) -> bool:
        decision = await self.gateway.check(get_quote(self.bundle.token("fininfo:read")))
        assert isinstance(decision, Allow | Deny)
        return isinstance(decision, Allow)

    def queue(self, text: str) -> None:
        self.source.queue.append(snapshot(self.directory, text))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    bundle = write_test_bundle(tmp_path)
    state = BundleState.from_bundle(bundle.bundle)
    await state.jwt.start()
    gateway = CheckPipeline(state)
    source = ScriptedSource()
    reloader = BundleReloader(gateway.bundles, source, load=bundle_loader(None))
    yield Rig(bundle, gateway, source, reloader, tmp_path)
    await reloader.stop()
    await gateway.state.jwt.aclose()


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "policy_service.reload" and record.levelno == logging.ERROR
    ]


def loads_total(gateway: CheckPipeline, result: str) -> float:
    metrics = CheckMetrics()
    metrics.watch(gateway.bundles, gateway.limiter)
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "policy_service_bundle_loads_total" and labels["result"] == result:
                return sample.value
    raise AssertionError(f"no bundle_loads_total{{result={result!r}}} in\n{text}")


# --- good and bad bundles ------------------------------------------------------------------


async def test_nothing_new_changes_nothing(rig: Rig) -> None:
    before = rig.gateway.state
    assert await rig.reloader.reload() is ReloadOutcome.UNCHANGED
    assert rig.gateway.state is before
    assert rig.gateway.bundles.loads.ok == 1


async def test_a_good_bundle_is_swapped_in(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "policy_service.reload")
    assert await rig.allows_get_quote()
    rig.queue(revised(rig.bundle, "B-1", get_quote=False))

    assert await rig.reloader.reload() is ReloadOutcome.LOADED
    assert rig.gateway.state.bundle.revision == "B-1"
    assert not await rig.allows_get_quote()
    assert rig.gateway.bundles.loads.ok == 2
    assert rig.gateway.bundles.loads.failed == 0
    assert [files.entry for files in rig.source.accepted_files] == ["bundle.yaml"]
    # The snapshot came to hold the JWKS file the bundle names: the source watches it now.
    assert set(rig.source.accepted_files[0].files) == {"bundle.yaml", "jwks.json"}
    assert [r.getMessage() for r in caplog.records] == [
        f"bundle revision test-1 -> B-1 loaded from {LOCATION}"
    ]


async def test_broken_yaml_is_refused_and_the_old_bundle_answers(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    before = rig.gateway.state
    broken = revised(rig.bundle, "broken-1") + "upstreams: [\n"
    rig.queue(broken)

    assert await rig.reloader.reload() is ReloadOutcome.REFUSED
    assert rig.gateway.state is before
    assert await rig.allows_get_quote()
    assert rig.gateway.bundles.loads.failed == 1
    assert rig.gateway.bundles.loads.failed_at is not None
    assert rig.gateway.bundles.loads.ok == 1
    source = rig.directory / "bundle.yaml"
    assert refusals(caplog) == [
        "bundle reload refused, still serving revision test-1: "
        f"{source}: line {broken.count(chr(10)) + 1}: not valid YAML: "
        "expected the node content, but found '<stream end>'"
    ]
    assert source.read_text() == rig.bundle.path.read_text()  # nothing written by a refusal


async def test_a_sighup_that_finds_nothing_new_says_so(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "policy_service.reload")
    assert await rig.reloader.reload(settled=True) is ReloadOutcome.UNCHANGED
    assert [r.getMessage() for r in caplog.records] == [
        f"reload requested: bundle at {LOCATION} is unchanged; serving revision test-1"
    ]
    # Polling finds nothing new all the time: only a SIGHUP is answered.
    caplog.clear()
    assert await rig.reloader.reload() is ReloadOutcome.UNCHANGED
    assert caplog.records == []


async def test_a_sighup_on_a_still_refused_bundle_repeats_why(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.queue(revised(rig.bundle, "broken-2") + "upstreams: [\n")
    assert await rig.reloader.reload() is ReloadOutcome.REFUSED
    assert len(refusals(caplog)) == 1
    caplog.clear()
    assert await rig.reloader.reload(settled=True) is ReloadOutcome.UNCHANGED
    (line,) = refusals(caplog)
    assert line.startswith(
        f"reload requested: bundle at {LOCATION} is unchanged since it was refused ("
    )
    assert line.endswith("); still serving revision test-1")
    assert "not valid YAML" in line
    # A good bundle clears it: the next SIGHUP with nothing new is calm again.
    rig.queue(revised(rig.bundle, "B-2"))
    assert await rig.reloader.reload() is ReloadOutcome.LOADED
    caplog.clear()
    assert await rig.reloader.reload(settled=True) is ReloadOutcome.UNCHANGED
    assert refusals(caplog) == []


async def test_an_invalid_bundle_is_refused_with_every_problem(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    text = revised(rig.bundle, "invalid-1").replace("version: v1", "version: v9")
    text = text.replace("path_prefix: /fininfo/", "path_prefix: fininfo")
    rig.queue(text)

    assert await rig.reloader.reload() is ReloadOutcome.REFUSED
    assert rig.gateway.state.bundle.revision == "test-1"
    (line,) = refusals(caplog)
    assert line.startswith("bundle reload refused, still serving revision test-1: ")
    assert "version: must be 'v1' (got 'v9')" in line
    assert "; " in line  # two problems, one line
    assert "path_prefix" in line
    assert loads_total(rig.gateway, "failed") == 1
    assert loads_total(rig.gateway, "ok") == 1


async def test_a_bad_jwks_file_is_refused(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    (rig.directory / "bad-keys.json").write_text('{"keys": "not a list"}')
    rig.queue(
        revised(rig.bundle, "bad-keys-1").replace(
            "jwks_file: jwks.json", "jwks_file: bad-keys.json"
        )
    )

    assert await rig.reloader.reload() is ReloadOutcome.REFUSED
    assert rig.gateway.state.bundle.revision == "test-1"
    assert await rig.allows_get_quote()
    (line,) = refusals(caplog)
    assert line.startswith("bundle reload refused, still serving revision test-1: ")
    assert "bad-keys.json" in line
    assert "not a JWKS" in line


async def test_a_key_file_the_verifier_cannot_start_with_is_refused(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # The loader checks JWKS files it reads; this one is left for the verifier to read at
    # start, so the refusal comes from starting the new verifier, before any swap.
    def load(files: BundleFiles) -> CompiledBundle:
        bundle = load_bundle_files(files)
        issuer = dataclasses.replace(
            bundle.issuers[0], jwks_file=str(rig.directory / "absent.json"), jwks_document=None
        )
        return dataclasses.replace(bundle, issuers=(issuer,))

    reloader = BundleReloader(rig.gateway.bundles, rig.source, load=load)
    rig.queue(revised(rig.bundle, "absent-keys-1"))
    assert await reloader.reload() is ReloadOutcome.REFUSED
    assert rig.gateway.state.bundle.revision == "test-1"
    (line,) = refusals(caplog)
    assert line == (
        "bundle reload refused, still serving revision test-1: "
        f"JWKS file {rig.directory / 'absent.json'}: cannot read (No such file or directory)"
    )


async def test_a_source_that_cannot_be_read_is_a_refusal(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.source.queue.append(
        BundleError([BundleProblem("http://b.example/b.yaml", "", "HTTP status 500")])
    )
    assert await rig.reloader.reload() is ReloadOutcome.REFUSED
    assert refusals(caplog) == [
        "bundle reload refused, still serving revision test-1: "
        "http://b.example/b.yaml: HTTP status 500"
    ]


async def test_an_unexpected_error_refuses_too_with_its_traceback(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    def load(files: BundleFiles) -> CompiledBundle:
        raise RuntimeError("a bug, with details that are not for the log line")

    reloader = BundleReloader(rig.gateway.bundles, rig.source, load=load)
    rig.queue(revised(rig.bundle, "any"))
    assert await reloader.reload() is ReloadOutcome.REFUSED
    assert refusals(caplog) == [
        "bundle reload refused, still serving revision test-1: unexpected error (RuntimeError)"
    ]
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert rig.gateway.bundles.loads.failed == 1


async def test_a_refusal_then_a_good_bundle(rig: Rig) -> None:
    rig.queue("version: v1\nrevision: [\n")
    rig.queue(revised(rig.bundle, "C-1"))
    assert await rig.reloader.reload() is ReloadOutcome.REFUSED
    assert await rig.reloader.reload() is ReloadOutcome.LOADED
    assert rig.gateway.state.bundle.revision == "C-1"
    assert (rig.gateway.bundles.loads.ok, rig.gateway.bundles.loads.failed) == (2, 1)


# --- the task: interval, SIGHUP's poke, stop --------------------------------------------


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the reloader never got there")


async def test_the_task_polls_on_its_interval(rig: Rig) -> None:
    rig.queue(revised(rig.bundle, "D-1"))
    reloader = BundleReloader(rig.gateway.bundles, rig.source, interval_seconds=0.01)
    reloader.start()
    try:
        await wait_for(lambda: rig.gateway.state.bundle.revision == "D-1")
    finally:
        await reloader.stop()


async def test_unwatched_it_reloads_on_a_poke_only(rig: Rig) -> None:
    reloader = BundleReloader(rig.gateway.bundles, rig.source, watch=False)
    assert reloader.interval_seconds is None
    reloader.start()
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert rig.source.polls == 0
        rig.queue(revised(rig.bundle, "E-1"))
        reloader.poke()
        await wait_for(lambda: rig.gateway.state.bundle.revision == "E-1")
        assert rig.source.settled == [True]  # a poke (SIGHUP) says the writing is done
    finally:
        await reloader.stop()


async def test_the_replaced_verifier_is_closed_later_not_at_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[JwtVerifier] = []
    original = JwtVerifier.aclose

    async def recording(self: JwtVerifier) -> None:
        closed.append(self)
        await original(self)

    monkeypatch.setattr(JwtVerifier, "aclose", recording)
    old = rig.gateway.state.jwt
    rig.queue(revised(rig.bundle, "F-1"))
    assert await rig.reloader.reload() is ReloadOutcome.LOADED
    await asyncio.sleep(0)
    assert old not in closed  # a check that began before the swap may still be using it
    await rig.reloader.stop()
    assert closed == [old]

    soon = BundleReloader(rig.gateway.bundles, rig.source, retire_after_seconds=0)
    replaced = rig.gateway.state.jwt
    rig.queue(revised(rig.bundle, "F-2"))
    assert await soon.reload() is ReloadOutcome.LOADED
    await wait_for(lambda: replaced in closed)
    await soon.stop()
    assert closed.count(replaced) == 1


# --- JWKS keys survive a reload ----------------------------------------------------------


@pytest.fixture
def fetcher(tmp_path: Path) -> FakeJwksFetcher:
    return FakeJwksFetcher()


def with_jwks_url(text: str, **settings: Any) -> str:
    extra = "".join(f"\n    {name}: {value}" for name, value in settings.items())
    return text.replace("jwks_file: jwks.json", f"jwks_url: {JWKS_URL}{extra}")


@pytest.fixture
async def url_rig(tmp_path: Path, fetcher: FakeJwksFetcher, clock: FakeClock) -> AsyncIterator[Rig]:
    bundle = write_test_bundle(tmp_path)
    fetcher.documents[JWKS_URL] = bundle.key.jwks()
    compiled = load_bundle_files(snapshot(tmp_path, with_jwks_url(bundle.path.read_text())))
    jwt = JwtVerifier(compiled.issuers, fetcher=fetcher, clock=clock)
    await jwt.start()
    gateway = CheckPipeline(BundleState.from_bundle(compiled, jwt))
    source = ScriptedSource()
    reloader = BundleReloader(gateway.bundles, source)
    yield Rig(bundle, gateway, source, reloader, tmp_path)
    await reloader.stop()
    await gateway.state.jwt.aclose()


async def test_keys_fetched_before_a_reload_verify_after_it(
    url_rig: Rig, fetcher: FakeJwksFetcher, clock: FakeClock
) -> None:
    assert fetcher.count() == 1
    clock.advance(60)  # past the refetch limit: a fresh source would fetch at once
    fetcher.fail = True  # the identity provider is down during the reload and after it
    url_rig.queue(with_jwks_url(revised(url_rig.bundle, "G-1", get_quote=False)))
    assert await url_rig.reloader.reload() is ReloadOutcome.LOADED
    assert url_rig.gateway.state.bundle.revision == "G-1"

    # Minted at the fake clock's time: a token issued after "now" would be refused.
    issued = int(clock.now())
    verified = await url_rig.gateway.state.jwt.verify(
        url_rig.bundle.token("fininfo:read", iat=issued), (FININFO_RESOURCE,)
    )
    assert isinstance(verified, Principal)
    await url_rig.reloader.stop()  # closes the replaced verifier: the keys are not its alone
    verified = await url_rig.gateway.state.jwt.verify(
        url_rig.bundle.token("fininfo:read", subject="bob", iat=issued), (FININFO_RESOURCE,)
    )
    assert isinstance(verified, Principal)
    assert fetcher.count() == 1  # nothing was refetched


async def test_an_issuer_with_other_key_settings_fetches_afresh(
    url_rig: Rig, fetcher: FakeJwksFetcher
) -> None:
    url_rig.queue(with_jwks_url(revised(url_rig.bundle, "H-1"), jwks_cache_seconds=60))
    assert await url_rig.reloader.reload() is ReloadOutcome.LOADED
    assert fetcher.count() == 2


@pytest.fixture
def closed_sources(monkeypatch: pytest.MonkeyPatch) -> list[UrlKeySource]:
    closed: list[UrlKeySource] = []
    original = UrlKeySource.aclose

    async def recording(self: UrlKeySource) -> None:
        closed.append(self)
        await original(self)

    monkeypatch.setattr(UrlKeySource, "aclose", recording)
    return closed


def issuer_config(bundle: TestBundle, tmp_path: Path, **settings: Any) -> CompiledBundle:
    return load_bundle_files(snapshot(tmp_path, with_jwks_url(bundle.path.read_text(), **settings)))


async def test_a_successor_shares_sources_and_the_last_to_close_closes_them(
    tmp_path: Path, fetcher: FakeJwksFetcher, closed_sources: list[UrlKeySource]
) -> None:
    bundle = write_test_bundle(tmp_path)
    fetcher.documents[JWKS_URL] = bundle.key.jwks()
    issuers = issuer_config(bundle, tmp_path).issuers
    old = JwtVerifier(issuers, fetcher=fetcher, clock=FakeClock(now=time.time()))
    await old.start()
    new = old.successor(issuers)
    await new.start()
    assert fetcher.count() == 1

    await old.aclose()
    await old.aclose()  # twice: still released once
    assert closed_sources == []
    fetcher.fail = True
    token = bundle.token("fininfo:read")
    assert isinstance(await new.verify(token, (FININFO_RESOURCE,)), Principal)
    await new.aclose()
    assert len(closed_sources) == 1


async def test_a_refused_successor_hands_its_sources_back(
    tmp_path: Path, fetcher: FakeJwksFetcher, closed_sources: list[UrlKeySource]
) -> None:
    bundle = write_test_bundle(tmp_path)
    fetcher.documents[JWKS_URL] = bundle.key.jwks()
    issuers = issuer_config(bundle, tmp_path).issuers
    serving = JwtVerifier(issuers, fetcher=fetcher, clock=FakeClock(now=time.time()))
    await serving.start()
    refused = serving.successor(issuers)
    await refused.aclose()  # the bundle it was for failed to load
    assert closed_sources == []
    assert isinstance(await serving.verify(bundle.token(), (FININFO_RESOURCE,)), Principal)

    # A successor of a closed verifier starts from scratch instead of sharing closed sources.
    await serving.aclose()
    assert len(closed_sources) == 1
    fresh = serving.successor(issuers)
    await fresh.start()
    assert fetcher.count() == 2
    await fresh.aclose()
