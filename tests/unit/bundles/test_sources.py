"""Bundle sources: a watched file or directory, and a URL polled with ETags.

A path source hands out a new snapshot only once a change has held still for one poll,
and never one whose bytes equal the bundle in service; a URL source asks with
``If-None-Match`` and takes 304 as "no change". Every failure is a ``BundleError`` whose
message says what went wrong and shows no credential.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_service.bundles.archive import pack_bundle
from policy_service.bundles.files import MAX_FILE_BYTES, BundleFiles
from policy_service.bundles.loader import load_bundle_files
from policy_service.bundles.sources import (
    BUNDLE_TOKEN_ENV_VAR,
    PathSource,
    UrlSource,
    source_for,
)
from policy_service.errors import BundleError
from policy_service.fetching import DowngradeRefused, NoDowngradeRedirects, redact_url
from policy_service.gateway.envoy_process import free_port
from tests.support.bundle_server import BundleServer
from tests.support.bundles import write_test_bundle


def problem_of(error: pytest.ExceptionInfo[BundleError]) -> str:
    (problem,) = error.value.problems
    return str(problem)


async def assert_quiet(source: PathSource, polls: int = 4) -> None:
    """Nothing to hand out, however often we ask (and the baseline is settled)."""
    for _ in range(polls):
        assert await source.poll() is None


async def next_snapshot(source: PathSource) -> BundleFiles:
    """The change is seen once, then handed out at the next poll when it held still."""
    assert await source.poll() is None, "a change must hold still for one poll first"
    snapshot = await source.poll()
    assert snapshot is not None
    return snapshot


# --- a file ------------------------------------------------------------------------------


async def test_a_rewritten_file_is_handed_out_once(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("revision: one\n")
    source = PathSource(path)
    first = await source.read()
    assert first.files == {"bundle.yaml": b"revision: one\n"}
    await assert_quiet(source)

    path.write_text("revision: number-two\n")
    snapshot = await next_snapshot(source)
    assert snapshot.files == {"bundle.yaml": b"revision: number-two\n"}
    await assert_quiet(source)


async def test_an_atomic_rename_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("revision: one\n")
    source = PathSource(path)
    await source.read()
    await assert_quiet(source)

    staged = tmp_path / ".bundle.yaml.tmp"
    staged.write_text("revision: two\n")  # same size: the new inode tells them apart
    os.replace(staged, path)
    assert (await next_snapshot(source)).files == {"bundle.yaml": b"revision: two\n"}


async def test_a_touch_or_the_same_bytes_again_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("revision: one\n")
    source = PathSource(path)
    await source.read()
    await assert_quiet(source)

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    await assert_quiet(source)
    staged = tmp_path / ".staged"
    staged.write_text("revision: one\n")
    os.replace(staged, path)
    await assert_quiet(source)


async def test_a_half_written_file_is_never_handed_out(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("revision: one\n")
    source = PathSource(path)
    await source.read()
    await assert_quiet(source)

    with path.open("w") as handle:  # an editor saving in two steps, a poll in between
        handle.write("revision: t")
        handle.flush()
        assert await source.poll() is None
        handle.write("wo-and-more\n")
    assert await source.poll() is None  # changed again since the last poll: still waiting
    snapshot = await source.poll()
    assert snapshot is not None
    assert snapshot.files == {"bundle.yaml": b"revision: two-and-more\n"}


async def test_a_settled_poll_takes_a_change_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("revision: one\n")
    source = PathSource(path)
    await source.read()
    await assert_quiet(source)

    path.write_text("revision: two-after-sighup\n")
    snapshot = await source.poll(settled=True)
    assert snapshot is not None
    assert snapshot.files == {"bundle.yaml": b"revision: two-after-sighup\n"}
    assert await source.poll(settled=True) is None  # and nothing more until it changes


async def test_a_missing_file_is_refused_once_then_picked_up_again(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("revision: one\n")
    source = PathSource(path)
    await source.read()
    await assert_quiet(source)

    path.unlink()
    assert await source.poll() is None
    with pytest.raises(BundleError) as error:
        await source.poll()
    assert problem_of(error) == f"{path}: does not exist"
    await assert_quiet(source)  # the same absence is not refused again and again

    path.write_text("revision: back-again\n")
    assert (await next_snapshot(source)).files == {"bundle.yaml": b"revision: back-again\n"}


async def test_files_the_bundle_names_are_watched_once_it_loaded(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    source = PathSource(bundle.path)
    first = await source.read()
    load_bundle_files(first)  # reads jwks.json through the snapshot
    source.accepted(first)
    await assert_quiet(source)

    jwks = tmp_path / "jwks.json"
    jwks.write_text(jwks.read_text().replace('"keys"', '"keys" '))
    snapshot = await next_snapshot(source)
    assert snapshot.files.keys() == {"bundle.yaml"}  # the loader reads the new JWKS itself
    assert load_bundle_files(snapshot).issuers[0].jwks_document == jwks.read_bytes()


async def test_a_named_file_that_appears_later_brings_the_bundle_back(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    source = PathSource(bundle.path)
    first = await source.read()
    load_bundle_files(first)
    source.accepted(first)
    await assert_quiet(source)

    # The bundle is rewritten to name a key file that is not there yet: refused.
    bundle.path.write_text(
        bundle.path.read_text().replace("jwks_file: jwks.json", "jwks_file: k.json")
    )
    refused = await next_snapshot(source)
    with pytest.raises(BundleError, match=r"k\.json"):
        load_bundle_files(refused)
    await assert_quiet(source)

    # The key file arrives second; its folder changed, so the bundle is offered again.
    (tmp_path / "k.json").write_bytes((tmp_path / "jwks.json").read_bytes())
    again = await next_snapshot(source)
    assert load_bundle_files(again).issuers[0].jwks_file == "k.json"


# --- a directory -------------------------------------------------------------------------


def configmap_version(directory: Path, name: str, files: dict[str, str]) -> None:
    """Lay out files the way a Kubernetes ConfigMap volume does, and switch ..data to them."""
    version = directory / name
    version.mkdir()
    for file_name, text in files.items():
        (version / file_name).write_text(text)
    staged = directory / "..data_tmp"
    staged.symlink_to(name)
    os.replace(staged, directory / "..data")  # one atomic rename swaps every file at once
    for file_name in files:
        link = directory / file_name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / file_name)


async def test_a_configmap_directory_swap_is_one_change(tmp_path: Path) -> None:
    directory = tmp_path / "bundle"
    directory.mkdir()
    configmap_version(
        directory, "..2026_01_01", {"bundle.yaml": "revision: one\n", "jwks.json": "{}"}
    )
    source = PathSource(directory)
    first = await source.read()
    assert first.files == {"bundle.yaml": b"revision: one\n", "jwks.json": b"{}"}
    await assert_quiet(source)

    configmap_version(
        directory, "..2026_01_02", {"bundle.yaml": "revision: two\n", "jwks.json": '{"k":1}'}
    )
    snapshot = await next_snapshot(source)
    assert snapshot.files == {"bundle.yaml": b"revision: two\n", "jwks.json": b'{"k":1}'}
    await assert_quiet(source)


async def test_a_new_file_in_a_directory_is_a_change(tmp_path: Path) -> None:
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "bundle.yaml").write_text("revision: one\n")
    source = PathSource(directory)
    await source.read()
    await assert_quiet(source)

    (directory / "extra.json").write_text("{}")
    snapshot = await next_snapshot(source)
    assert set(snapshot.files) == {"bundle.yaml", "extra.json"}


async def test_a_signature_file_is_watched(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("revision: one\n")
    source = PathSource(path)
    await source.read()
    await assert_quiet(source)

    (tmp_path / "bundle.yaml.sig").write_text("a.b.c\n")
    snapshot = await next_snapshot(source)
    assert snapshot.signature == b"a.b.c\n"


# --- a URL -------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[BundleServer]:
    running = BundleServer().start()
    yield running
    running.stop()


async def test_an_unchanged_bundle_is_a_304(server: BundleServer) -> None:
    server.serve(b"revision: one\n", etag='"v1"')
    source = UrlSource(server.url(), timeout_seconds=5)
    first = await source.read()
    assert first.entry == "bundle.yaml"
    assert first.files == {"bundle.yaml": b"revision: one\n"}
    assert first.source == server.url()

    assert await source.poll() is None
    assert server.seen[-1].headers["If-None-Match"] == '"v1"'
    assert server.statuses == [200, 304]

    server.serve(b"revision: two\n", etag='"v2"')
    snapshot = await source.poll()
    assert snapshot is not None
    assert snapshot.files == {"bundle.yaml": b"revision: two\n"}
    assert server.seen[-1].headers["If-None-Match"] == '"v1"'
    assert await source.poll() is None
    assert server.seen[-1].headers["If-None-Match"] == '"v2"'


async def test_last_modified_is_sent_back(server: BundleServer) -> None:
    server.serve(b"revision: one\n", etag='"v1"')
    server.last_modified = "Wed, 21 Oct 2026 07:28:00 GMT"
    source = UrlSource(server.url(), timeout_seconds=5)
    await source.read()
    await source.poll()
    assert server.seen[-1].headers["If-Modified-Since"] == "Wed, 21 Oct 2026 07:28:00 GMT"


async def test_the_document_is_named_after_the_url_path(server: BundleServer) -> None:
    server.serve(b"revision: one\n")
    named = await UrlSource(server.url("/policies/edge.yaml"), timeout_seconds=5).read()
    assert named.entry == "edge.yaml"
    bare = await UrlSource(server.url("/"), timeout_seconds=5).read()
    assert bare.entry == "bundle.yaml"


async def test_a_gzip_body_is_an_archive(server: BundleServer, tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    files = BundleFiles(entry="bundle.yaml", origin=str(tmp_path), root=tmp_path)
    files.read("bundle.yaml")
    load_bundle_files(files)
    server.serve(pack_bundle(files))
    snapshot = await UrlSource(server.url("/bundle.tar.gz"), timeout_seconds=5).read()
    assert snapshot.entry == "bundle.yaml"
    assert set(snapshot.files) == {"bundle.yaml", "jwks.json"}
    assert load_bundle_files(snapshot).revision == bundle.bundle.revision


@pytest.mark.parametrize("status", [404, 500, 403])
async def test_an_error_status_is_refused_by_number(server: BundleServer, status: int) -> None:
    server.status = status
    with pytest.raises(BundleError) as error:
        await UrlSource(server.url(), timeout_seconds=5).poll()
    assert problem_of(error) == (f"{server.url()}: the bundle server answered HTTP status {status}")


async def test_a_slow_server_is_refused_as_a_timeout(server: BundleServer) -> None:
    server.serve(b"revision: one\n")
    server.delay_seconds = 2.0
    with pytest.raises(BundleError) as error:
        await UrlSource(server.url(), timeout_seconds=0.2).poll()
    assert problem_of(error) == f"{server.url()}: the bundle server did not answer within 0.2s"


async def test_nobody_listening_is_refused_as_such() -> None:
    url = f"http://127.0.0.1:{free_port()}/bundle.yaml"
    with pytest.raises(BundleError) as error:
        await UrlSource(url, timeout_seconds=5).poll()
    assert problem_of(error) == (f"{url}: cannot connect to the bundle server (connection refused)")


async def test_a_too_large_document_is_refused(server: BundleServer) -> None:
    server.serve(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(BundleError) as error:
        await UrlSource(server.url(), timeout_seconds=5).poll()
    assert problem_of(error) == (
        f"{server.url()}: the bundle document is larger than {MAX_FILE_BYTES} bytes"
    )


def test_only_http_and_https_urls_are_sources(tmp_path: Path) -> None:
    assert isinstance(source_for("https://bundles.example/b.tar.gz"), UrlSource)
    assert isinstance(source_for("HTTP://bundles.example/b.yaml"), UrlSource)
    assert isinstance(source_for(str(tmp_path / "bundle.yaml")), PathSource)
    assert isinstance(source_for("file:///etc/bundle.yaml"), PathSource)  # a (odd) path


def test_a_redirect_from_https_to_http_is_refused() -> None:
    handler = NoDowngradeRedirects()
    request = urllib.request.Request("https://bundles.example/b.yaml")
    with pytest.raises(DowngradeRefused):
        handler.redirect_request(request, None, 302, "Found", {}, "http://bundles.example/b.yaml")
    upgraded = handler.redirect_request(
        urllib.request.Request("http://bundles.example/b.yaml"),
        None,
        302,
        "Found",
        {},
        "https://bundles.example/b.yaml",
    )
    assert upgraded is not None
    assert upgraded.full_url == "https://bundles.example/b.yaml"


async def test_a_plain_redirect_is_followed(server: BundleServer) -> None:
    target = BundleServer().start()
    try:
        target.serve(b"revision: moved\n")
        server.redirect_to = target.url()
        snapshot = await UrlSource(server.url(), timeout_seconds=5).read()
        assert snapshot.files == {"bundle.yaml": b"revision: moved\n"}
    finally:
        target.stop()


async def test_the_bearer_token_is_sent_and_never_shown(server: BundleServer) -> None:
    token = "bundle-server-token-0123456789"
    environ = {BUNDLE_TOKEN_ENV_VAR: token}
    server.serve(b"revision: one\n")
    url = server.url("/bundle.yaml?sig=query-secret")
    source = UrlSource(url, timeout_seconds=5, environ=environ)
    await source.read()
    assert server.seen[-1].headers["Authorization"] == f"Bearer {token}"
    assert server.seen[-1].path == "/bundle.yaml?sig=query-secret"

    server.status = 500
    with pytest.raises(BundleError) as error:
        await source.poll()
    assert token not in str(error.value)
    assert "query-secret" not in str(error.value)
    assert source.location == server.url("/bundle.yaml")


async def test_the_token_does_not_follow_a_redirect(server: BundleServer) -> None:
    # urllib copies headers to the redirected request; the credential is for our server.
    target = BundleServer().start()
    try:
        target.serve(b"revision: moved\n")
        server.redirect_to = target.url()
        source = UrlSource(server.url(), timeout_seconds=5, environ={BUNDLE_TOKEN_ENV_VAR: "t"})
        await source.read()
        assert server.seen[-1].headers["Authorization"] == "Bearer t"
        assert "Authorization" not in target.seen[-1].headers
    finally:
        target.stop()


def test_urls_in_messages_lose_user_info_and_query() -> None:
    assert redact_url("https://user:pw@bundles.example:8443/b.yaml?sig=x#f") == (
        "https://bundles.example:8443/b.yaml"
    )
