"""Bundles as gzip'd tar archives, the form they take over HTTP(S).

An archive holds ``bundle.yaml`` at its top, the files it names at their relative names,
and ``bundle.yaml.sig`` when signed. ``pack_bundle`` is deterministic (sorted names, zero
times and owners), so the same bundle always makes the same bytes and a CDN or a diff sees
no change where there is none.

``unpack_bundle`` reads untrusted bytes, so it never writes to disk and never trusts a
header: links, devices, escaping names and duplicates are refused, and sizes are capped on
the *decompressed* stream as it is read, so a small archive that inflates to gigabytes is
refused after at most ``MAX_TOTAL_BYTES`` of work.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from pathlib import PurePosixPath

from policy_service.bundles.files import (
    DIRECTORY_ENTRY,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_TOTAL_BYTES,
    SIGNATURE_SUFFIX,
    BundleFiles,
)
from policy_service.errors import BundleError, BundleProblem

__all__ = ["ARCHIVE_SIGNATURE", "pack_bundle", "unpack_bundle"]

ARCHIVE_SIGNATURE = DIRECTORY_ENTRY + SIGNATURE_SUFFIX
_GZIP_MAGIC = b"\x1f\x8b"
# Tar headers and padding on top of the files themselves: a 512-byte header and up to 511
# bytes of padding per member, a few PAX records, and the end-of-archive blocks.
_TAR_OVERHEAD_BYTES = (MAX_FILES + 8) * 4096
_MAX_STREAM_BYTES = MAX_TOTAL_BYTES + _TAR_OVERHEAD_BYTES


def _refuse(origin: str, message: str) -> BundleError:
    return BundleError([BundleProblem(origin, "", message)])


def pack_bundle(files: BundleFiles) -> bytes:
    """The archive of a snapshot: its entry as ``bundle.yaml``, the other files as named.

    Load a single-file bundle first, so the JWKS files it names are in the snapshot. A signed
    snapshot keeps its entry's name: its manifest names the entry, so a signed
    ``policy.yaml`` cannot become ``bundle.yaml`` without being signed again.
    """
    if files.signature is not None and files.entry != DIRECTORY_ENTRY:
        raise _refuse(
            files.source,
            f"a signed bundle is archived only when its entry is named '{DIRECTORY_ENTRY}' "
            f"(the signature names '{files.entry}'): rename it and sign it again",
        )
    members = {DIRECTORY_ENTRY: files.files[files.entry]}
    for name, content in files.files.items():
        if name == files.entry:
            continue
        if name in (DIRECTORY_ENTRY, ARCHIVE_SIGNATURE):
            raise _refuse(
                files.source,
                f"cannot archive the file '{name}': in an archive that name is the bundle's "
                f"{'entry' if name == DIRECTORY_ENTRY else 'signature'}",
            )
        members[name] = content
    if files.signature is not None:
        members[ARCHIVE_SIGNATURE] = files.signature

    buffer = io.BytesIO()
    # mtime=0 and no file name in the gzip header: the bytes depend on the content only.
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for name in sorted(members):
            content = members[name]
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class _TooLarge(Exception):
    pass


class _CappedReader(io.RawIOBase):
    """Decompresses on demand and stops once more than ``limit`` bytes have come out."""

    def __init__(self, source: gzip.GzipFile, limit: int) -> None:
        self._source = source
        self._limit = limit
        self._seen = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # Never more than one step past the limit, whatever size tarfile asks for.
        wanted = self._limit + 1 - self._seen if size < 0 else min(size, self._limit + 1)
        chunk = self._source.read(wanted)
        self._seen += len(chunk)
        if self._seen > self._limit:
            raise _TooLarge
        return chunk


def unpack_bundle(data: bytes, origin: str) -> BundleFiles:
    """A sealed snapshot of the archive ``data``; ``origin`` names it in messages."""
    if not data.startswith(_GZIP_MAGIC):
        raise _refuse(origin, "is not a gzip'd tar archive")
    snapshot = BundleFiles(entry=DIRECTORY_ENTRY, origin=origin, root=None, sealed=True)
    directories: set[str] = set()
    total = 0
    try:
        stream = _CappedReader(
            gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"), _MAX_STREAM_BYTES
        )
        # "r|": a forward-only stream, so tarfile never seeks and every byte passes the cap.
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                name = _member_name(member.name, origin)
                if member.isdir():
                    directories.add(name)
                    continue
                _check_member_type(member, name, origin)
                if name in snapshot.files or (name == ARCHIVE_SIGNATURE and snapshot.signature):
                    raise _refuse(origin, f"holds '{_printable(name)}' twice")
                if len(snapshot.files) >= MAX_FILES and name != ARCHIVE_SIGNATURE:
                    raise _refuse(origin, f"holds more than {MAX_FILES} files")
                if member.size > MAX_FILE_BYTES:
                    raise _refuse(
                        origin, f"'{_printable(name)}' is larger than {MAX_FILE_BYTES} bytes"
                    )
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise _refuse(origin, f"unpacks to more than {MAX_TOTAL_BYTES} bytes")
                content = _member_content(archive, member, origin)
                if name == ARCHIVE_SIGNATURE:
                    snapshot.signature = content
                else:
                    snapshot.files[name] = content
    except _TooLarge:
        raise _refuse(origin, f"unpacks to more than {MAX_TOTAL_BYTES} bytes") from None
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, OSError):
        raise _refuse(origin, "is not a valid gzip'd tar archive (corrupt or truncated)") from None
    _check_layout(snapshot, directories, origin)
    return snapshot


def _member_name(raw: str, origin: str) -> str:
    """The member's bundle-relative name; ``./`` prefixes (``tar -C dir .``) are dropped."""
    if raw.startswith("/") or "\\" in raw or "\x00" in raw:
        raise _refuse(origin, f"member '{_printable(raw)}' is not a relative path")
    parts = [part for part in PurePosixPath(raw).parts if part != "."]
    if ".." in parts:
        raise _refuse(origin, f"member '{_printable(raw)}' points outside the bundle")
    if not parts:
        return "."
    return "/".join(parts)


def _check_member_type(member: tarfile.TarInfo, name: str, origin: str) -> None:
    # Links are refused outright rather than resolved: inside an archive they can only
    # alias another member or point at the host, and neither belongs in a bundle.
    if member.issym():
        raise _refuse(origin, f"member '{_printable(name)}' is a symbolic link")
    if member.islnk():
        raise _refuse(origin, f"member '{_printable(name)}' is a hard link")
    if member.isdev():
        raise _refuse(origin, f"member '{_printable(name)}' is a device or a pipe")
    if not member.isfile() or member.issparse() or name == ".":
        raise _refuse(origin, f"member '{_printable(name)}' is not a regular file")


def _member_content(archive: tarfile.TarFile, member: tarfile.TarInfo, origin: str) -> bytes:
    reader = archive.extractfile(member)
    if reader is None:  # isfile() was checked; tarfile returns None only for other types
        raise _refuse(origin, f"member '{_printable(member.name)}' is not a regular file")
    content = reader.read(member.size)
    if len(content) != member.size:
        raise _refuse(origin, "is not a valid gzip'd tar archive (corrupt or truncated)")
    return content


def _check_layout(snapshot: BundleFiles, directories: set[str], origin: str) -> None:
    if DIRECTORY_ENTRY not in snapshot.files:
        raise _refuse(origin, f"has no {DIRECTORY_ENTRY} at its top")
    # A name both a file and a folder (``keys`` and ``keys/jwks.json``) would mean different
    # things to different readers; a bundle has one meaning.
    for name in snapshot.files:
        parents = PurePosixPath(name).parents
        for parent in list(parents)[:-1]:  # the last parent is "." itself
            if str(parent) in snapshot.files:
                raise _refuse(origin, f"'{_printable(str(parent))}' is both a file and a directory")
        if name in directories:
            raise _refuse(origin, f"'{_printable(name)}' is both a file and a directory")


def _printable(text: str) -> str:
    shown = "".join(character if character.isprintable() else "?" for character in text)
    return shown if len(shown) <= 120 else shown[:117] + "..."
