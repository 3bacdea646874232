"""A bundle as a set of files read once into memory.

A bundle is either one YAML file or a directory whose entry is ``bundle.yaml``; either may
sit beside other files it names (JWKS files) and a signature (``<entry>.sig``). The loader,
the signature check and the reload watcher all work on one ``BundleFiles`` snapshot, so
what was verified is byte for byte what gets compiled: nothing is read from disk twice.

A snapshot read from disk may read more files on demand (``read``) until it is *sealed*;
a verified signature seals it to exactly the files its manifest lists.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

DIRECTORY_ENTRY = "bundle.yaml"
SIGNATURE_SUFFIX = ".sig"
# Generous for policy (the largest example is a few KiB) but bounded: a bundle comes from
# a URL or a shared volume, and memory is not where a bad one should be noticed.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_TOTAL_BYTES = 16 * 1024 * 1024
MAX_FILES = 256


class BundleFileError(Exception):
    """A file of a bundle is missing, unreadable, outside the bundle or too large."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass
class BundleFiles:
    """The files of one bundle, by relative POSIX name."""

    entry: str  # name of the bundle document among ``files``
    origin: str  # where it came from, for messages: a path or a URL without credentials
    files: dict[str, bytes] = field(default_factory=dict)
    root: Path | None = None  # where on-demand reads come from; None for archives and URLs
    sealed: bool = False  # no more on-demand reads: only ``files`` exist
    # The signature file, when the source had one (kept apart: it is not covered by itself).
    signature: bytes | None = None

    @property
    def source(self) -> str:
        """How messages name the bundle document: the file, or the entry inside its origin."""
        if PurePosixPath(self.origin).name == self.entry:
            return self.origin
        return f"{self.origin}/{self.entry}"

    @property
    def entry_text(self) -> str:
        return self.files[self.entry].decode("utf-8")

    @property
    def base_name(self) -> str:
        """The directory of the entry, as the prefix its relative references resolve under."""
        parent = PurePosixPath(self.entry).parent
        return "" if str(parent) == "." else str(parent)

    def resolve(self, reference: str) -> str:
        """The bundle-relative name of ``reference``, a path relative to the entry's folder."""
        joined = (
            PurePosixPath(self.base_name, reference) if self.base_name else PurePosixPath(reference)
        )
        parts: list[str] = []
        for part in joined.parts:
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise BundleFileError(reference, "points outside the bundle")
                parts.pop()
                continue
            parts.append(part)
        if not parts or joined.is_absolute():
            raise BundleFileError(reference, "must be a path relative to the bundle")
        return "/".join(parts)

    def read(self, name: str) -> bytes:
        """The content of ``name``, reading it from ``root`` once if not yet in the snapshot."""
        if name in self.files:
            return self.files[name]
        if self.sealed or self.root is None:
            raise BundleFileError(name, "is not in the bundle")
        path = self.root / name
        self.files[name] = _read_capped(path, name, self._total())
        return self.files[name]

    def seal(self, names: Mapping[str, bytes] | None = None) -> None:
        """Freeze the snapshot; with ``names``, to exactly those files."""
        if names is not None:
            self.files = dict(names)
        self.sealed = True

    def _total(self) -> int:
        return sum(len(content) for content in self.files.values())

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.files))


def read_bundle_path(path: Path) -> BundleFiles:
    """Snapshot a bundle file, or a bundle directory with every regular file in it.

    A directory is read whole (hidden files and the signature aside), because a signed
    directory must not hold a file its manifest does not name.
    """
    if path.is_dir():
        return _read_directory(path)
    name = path.name
    snapshot = BundleFiles(entry=name, origin=str(path), root=path.resolve().parent)
    snapshot.files[name] = _read_capped(path, name, 0)
    signature = path.with_name(name + SIGNATURE_SUFFIX)
    if signature.is_file():
        snapshot.signature = _read_capped(signature, signature.name, 0)
    return snapshot


def _read_directory(directory: Path) -> BundleFiles:
    entry = directory / DIRECTORY_ENTRY
    if not entry.is_file():
        raise BundleFileError(str(directory), f"a bundle directory needs a {DIRECTORY_ENTRY}")
    snapshot = BundleFiles(entry=DIRECTORY_ENTRY, origin=str(directory), root=directory.resolve())
    signature_name = DIRECTORY_ENTRY + SIGNATURE_SUFFIX
    for name in directory_files(directory):
        if name == signature_name:
            snapshot.signature = _read_capped(directory / name, name, 0)
            continue
        snapshot.files[name] = _read_capped(directory / name, name, snapshot._total())
        if len(snapshot.files) > MAX_FILES:
            raise BundleFileError(str(directory), f"holds more than {MAX_FILES} files")
    # Everything in the directory is in the snapshot; a reference elsewhere is not the bundle's.
    snapshot.sealed = True
    return snapshot


def directory_files(directory: Path) -> list[str]:
    names: list[str] = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        # Kubernetes ConfigMap volumes keep their real files under hidden ..data folders and
        # link the visible names to them; hidden entries are the mechanism, not the bundle.
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file():
            names.append(relative.as_posix())
    return names


def _read_capped(path: Path, name: str, total_so_far: int) -> bytes:
    try:
        with path.open("rb") as handle:
            content = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BundleFileError(name, "does not exist") from None
    except OSError as exc:
        reason = (exc.strerror or "cannot be read").lower()
        raise BundleFileError(name, f"cannot be read ({reason})") from None
    if len(content) > MAX_FILE_BYTES:
        raise BundleFileError(name, f"is larger than {MAX_FILE_BYTES} bytes")
    if total_so_far + len(content) > MAX_TOTAL_BYTES:
        raise BundleFileError(name, f"makes the bundle larger than {MAX_TOTAL_BYTES} bytes")
    return content
