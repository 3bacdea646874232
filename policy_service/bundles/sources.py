"""Where a bundle comes from, and whether it has changed: a watched path or a polled URL.

A source hands out ``BundleFiles`` snapshots. ``read`` takes one now (the first load);
``poll`` returns a new one only when the bundle changed since the last one handed out, and
``None`` otherwise. A change that cannot be read (a file gone, a bundle server answering
500) raises ``BundleError`` with the reason, once per change for a path and once per poll
for a URL: the reloader refuses it and the last good bundle keeps serving.

A path is watched by polling a cheap fingerprint (``os.stat`` of every file of the last
snapshot and of the signature; for a directory, also the names in it) rather than with
inotify: it works the same on every file system, a ConfigMap volume's symlink swap
included, and needs no dependency. Editors and ``kubectl`` write in several steps, so a
snapshot is taken only once the fingerprint has held still for one poll, and dropped when
its bytes equal the last one's (a ``touch``, or a ConfigMap update that changed another
key). Two writes of the same size within one file-system clock tick (a few milliseconds)
and on the same inode look alike; waiting for one stable poll is what makes that unlikely.

A URL is polled with ``If-None-Match`` (and ``If-Modified-Since``): 304 means no change.
A gzip body is a bundle archive; anything else is one YAML document.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

from policy_service.bundles.files import (
    DIRECTORY_ENTRY,
    MAX_FILE_BYTES,
    MAX_TOTAL_BYTES,
    SIGNATURE_SUFFIX,
    BundleFileError,
    BundleFiles,
    directory_files,
    read_bundle_path,
)
from policy_service.errors import BundleError, BundleProblem
from policy_service.fetching import DowngradeRefused, NoDowngradeRedirects, redact_url

__all__ = [
    "BUNDLE_TOKEN_ENV_VAR",
    "PATH_POLL_SECONDS",
    "URL_POLL_SECONDS",
    "BundleSource",
    "PathSource",
    "UrlSource",
    "source_for",
]

# Sent as "Authorization: Bearer ..." to the bundle server. From the environment, so it is
# never in the process list; never logged.
BUNDLE_TOKEN_ENV_VAR = "POLICY_SERVICE_BUNDLE_TOKEN"  # noqa: S105 (a variable name)
PATH_POLL_SECONDS = 1.0  # a stat per file per second costs nothing
URL_POLL_SECONDS = 30.0  # a conditional GET is cheap, but it is someone else's server
DEFAULT_FETCH_TIMEOUT_SECONDS = 10.0
_GZIP_MAGIC = b"\x1f\x8b"


class BundleSource(Protocol):
    location: str  # for messages: a path, or a URL without credentials
    default_interval_seconds: float

    async def read(self) -> BundleFiles:
        """A snapshot now, whatever changed; raises ``BundleError``."""
        ...

    async def poll(self, *, settled: bool = False) -> BundleFiles | None:
        """A snapshot if the bundle changed since the last one, else None; raises
        ``BundleError`` when a change cannot be read. ``settled``: whoever changed it says
        they are done (SIGHUP), so a change need not hold still for a poll first."""
        ...

    def accepted(self, files: BundleFiles) -> None:
        """``files`` went into service (after it loaded, so it holds what it named)."""
        ...


def source_for(
    location: str,
    *,
    timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS,
    environ: Mapping[str, str] | None = None,
) -> BundleSource:
    """An http(s) URL is polled; anything else is a file or directory path, watched."""
    if location.lower().startswith(("http://", "https://")):
        return UrlSource(location, timeout_seconds=timeout_seconds, environ=environ)
    return PathSource(location)


def _digest(files: BundleFiles, extra: Mapping[str, bytes] | None = None) -> str:
    """One hash of every byte of a snapshot (and of ``extra`` files), for "same bundle?"."""
    everything = {**files.files, **(extra or {})}
    digest = hashlib.sha256(files.entry.encode())
    for name in sorted(everything):
        content = everything[name]
        # Lengths delimit the fields, so no two different snapshots hash alike by shifting
        # bytes between a name and a content.
        digest.update(f"\0{len(name)}:{name}\0{len(content)}:".encode())
        digest.update(content)
    signature = files.signature
    digest.update(b"\0sig:" + (b"-" if signature is None else b"%d:" % len(signature)))
    digest.update(signature or b"")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# A file or a directory


_FileStat = tuple[str, int, int, int]  # name, inode, mtime in ns, size
_MISSING = (-1, -1, -1)
# Whether the path is a directory, the names a directory shows, and the stat of each file.
Fingerprint = tuple[bool, tuple[str, ...], tuple[_FileStat, ...]]


class PathSource:
    """A bundle file or directory, watched by polling its fingerprint."""

    default_interval_seconds = PATH_POLL_SECONDS

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self.location = str(path)
        self._serving: BundleFiles | None = None  # what the gateway runs: read, or accepted
        self._last: BundleFiles | None = None  # the snapshot handed out last
        self._offered: Fingerprint | None = None  # the fingerprint ``_last`` was read at
        self._previous: Fingerprint | None = None  # the fingerprint the previous poll saw

    async def read(self) -> BundleFiles:
        return await asyncio.to_thread(self._read_now)

    async def poll(self, *, settled: bool = False) -> BundleFiles | None:
        return await asyncio.to_thread(self._poll_now, settled)

    def accepted(self, files: BundleFiles) -> None:
        """``files`` (a snapshot from ``read`` or ``poll``) is now in service. Loading it
        read the files it names, and those are watched too from now on."""
        self._serving = files

    def _read_now(self) -> BundleFiles:
        self._previous = self._offered = self._fingerprint()
        snapshot = self._snapshot()
        self._last = self._serving = snapshot
        return snapshot

    def _poll_now(self, settled: bool) -> BundleFiles | None:
        current = self._fingerprint()
        previous, self._previous = self._previous, current
        if current == self._offered:
            return None
        if current != previous and not settled:
            return None  # perhaps still being written: look again at the next poll
        # Whatever comes of it, a change is dealt with once: a refused bundle is offered
        # again only when its files change again.
        self._offered = current
        snapshot = self._snapshot()
        after = self._fingerprint()
        if after != current:
            # Written to while we read it: forget this read and wait for it to settle.
            self._previous, self._offered = after, None
            return None
        serving = self._serving
        if serving is not None and _digest(serving) == _digest(
            snapshot, self._also_read(snapshot, serving)
        ):
            return None  # touched, or rewritten with the same bytes
        self._last = snapshot
        return snapshot

    def _snapshot(self) -> BundleFiles:
        try:
            return read_bundle_path(self._path)
        except BundleFileError as exc:
            raise BundleError([BundleProblem(self.location, "", exc.message)]) from None

    def _also_read(self, snapshot: BundleFiles, serving: BundleFiles) -> dict[str, bytes]:
        """The files the serving snapshot came to hold by loading (the JWKS a single-file
        bundle names), read now for the comparison only: the loader reads its own, and a
        signed single-file snapshot must hold nothing its manifest does not list."""
        extra: dict[str, bytes] = {}
        if snapshot.sealed or snapshot.root is None:
            return extra
        for name in serving.files:
            if name in snapshot.files:
                continue
            try:
                with (snapshot.root / name).open("rb") as handle:
                    extra[name] = handle.read(MAX_FILE_BYTES + 1)
            except OSError:
                continue  # gone: the loader says so if the new bundle still names it
        return extra

    def _fingerprint(self) -> Fingerprint:
        path = self._path
        is_directory = path.is_dir()
        paths: dict[str, Path] = {}
        if is_directory:
            listing = tuple(directory_files(path))
            paths[DIRECTORY_ENTRY] = path / DIRECTORY_ENTRY
            paths[SIGNATURE_SUFFIX] = path / (DIRECTORY_ENTRY + SIGNATURE_SUFFIX)
            base = path
        else:
            listing = ()
            paths[path.name] = path
            paths[SIGNATURE_SUFFIX] = path.with_name(path.name + SIGNATURE_SUFFIX)
            # A file the bundle names may appear after it (written second, or the bundle
            # was refused for its absence): the folder's own mtime changes when it does.
            paths["/"] = path.parent
            base = path.parent
        for snapshot in (self._serving, self._last):
            if snapshot is None:
                continue
            # Neighbours are read from the entry's real folder (a symlinked file's target).
            folder = base if is_directory or snapshot.root is None else snapshot.root
            for name in snapshot.files:
                paths.setdefault(name, folder / name)
        return is_directory, listing, tuple(_stat(name, paths[name]) for name in sorted(paths))


def _stat(name: str, path: Path) -> _FileStat:
    try:
        info = path.stat()  # follows symlinks: a ConfigMap's ..data swap shows here
    except OSError:
        return (name, *_MISSING)
    return (name, info.st_ino, info.st_mtime_ns, info.st_size)


# ---------------------------------------------------------------------------------------
# An HTTP(S) URL


class UrlSource:
    """A bundle served over HTTP(S), polled with conditional GETs."""

    default_interval_seconds = URL_POLL_SECONDS

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self._url = url
        self.location = redact_url(url)
        self._timeout_seconds = timeout_seconds
        self._token = environ.get(BUNDLE_TOKEN_ENV_VAR) or None
        self._opener = urllib.request.build_opener(NoDowngradeRedirects())
        self._etag: str | None = None
        self._last_modified: str | None = None
        path = urllib.parse.urlsplit(url).path if self.location != "(unparseable URL)" else ""
        self._entry = PurePosixPath(path).name or DIRECTORY_ENTRY

    async def read(self) -> BundleFiles:
        snapshot = await asyncio.to_thread(self._get, False)
        assert snapshot is not None  # an unconditional GET never answers 304
        return snapshot

    async def poll(self, *, settled: bool = False) -> BundleFiles | None:
        return await asyncio.to_thread(self._get, True)

    def accepted(self, files: BundleFiles) -> None:
        return None  # the ETag already says which bundle we have

    def _refuse(self, message: str) -> BundleError:
        return BundleError([BundleProblem(self.location, "", message)])

    def _get(self, conditional: bool) -> BundleFiles | None:
        try:
            scheme = urllib.parse.urlsplit(self._url).scheme.lower()
        except ValueError:
            raise self._refuse("not a valid URL") from None
        if scheme not in ("http", "https"):
            # urllib would also open file:// and ftp:// URLs; a bundle URL is HTTP(S) only.
            raise self._refuse("only http and https URLs are supported")
        request = urllib.request.Request(  # noqa: S310 - scheme checked just above
            self._url, headers={"User-Agent": "policy-service"}
        )
        if conditional and self._etag is not None:
            request.add_header("If-None-Match", self._etag)
        if conditional and self._last_modified is not None:
            request.add_header("If-Modified-Since", self._last_modified)
        if self._token is not None:
            # Unredirected: a redirect to another host must not carry our credential along.
            request.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            with self._opener.open(request, timeout=self._timeout_seconds) as response:
                status = response.status
                headers = response.headers
                data: bytes = response.read(MAX_TOTAL_BYTES + 1)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 304:
                return None
            raise self._refuse(f"the bundle server answered HTTP status {exc.code}") from None
        except DowngradeRefused:
            raise self._refuse("refused a redirect from https to http") from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad URLs
            raise self._refuse(self._network_problem(exc)) from None
        if status != 200:
            raise self._refuse(f"the bundle server answered HTTP status {status}")
        if len(data) > MAX_TOTAL_BYTES:
            raise self._refuse(f"the bundle is larger than {MAX_TOTAL_BYTES} bytes")
        # Remembered even if the bundle is then refused: the same bytes would be refused
        # again, so the next poll asks only whether they changed.
        self._etag = headers.get("ETag")
        self._last_modified = headers.get("Last-Modified")
        if data.startswith(_GZIP_MAGIC):
            from policy_service.bundles.archive import unpack_bundle

            return unpack_bundle(data, self.location)
        if len(data) > MAX_FILE_BYTES:
            raise self._refuse(f"the bundle document is larger than {MAX_FILE_BYTES} bytes")
        snapshot = BundleFiles(entry=self._entry, origin=self.location, sealed=True)
        snapshot.files[self._entry] = data
        return snapshot

    def _network_problem(self, exc: BaseException) -> str:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError | socket.timeout):
            return f"the bundle server did not answer within {self._timeout_seconds:g}s"
        if isinstance(reason, ConnectionRefusedError):
            return "cannot connect to the bundle server (connection refused)"
        if isinstance(reason, socket.gaierror):
            return "cannot resolve the bundle server's host name"
        if isinstance(reason, OSError) and reason.strerror:
            return f"cannot fetch the bundle ({reason.strerror.lower()})"
        # Never the exception's text: it may quote the URL, query string and all.
        return f"cannot fetch the bundle ({type(reason).__name__})"
