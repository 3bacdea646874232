"""Rollback protection: a signed bundle older than the one serving is refused.

A copy of last month's validly signed bundle is still validly signed, so a signature alone
cannot tell an upgrade from someone putting an old, laxer policy back. The manifest's
``signed_at`` can: it is signed, and a newer edit is always signed later. (Revisions are
free-form names, so they are reported, never ordered.)

The floor is the signing time of the newest bundle this gateway has put into service. It
lives in memory for hot reloads and in a small JSON state file for restarts::

    {"revision": "finance-2026-11-22", "signed_at": "2026-11-22T09:30:00Z"}

A missing file is no floor (a first start); a file that cannot be read or parsed stops
the start, because quietly dropping it would drop the protection. The file is replaced
whole (temporary file, fsync, rename), so a crash never leaves half of one.

An intended rollback is an explicit act: re-sign the old bundle (a new ``signed_at``), or
start with ``--allow-rollback``, which lowers the floor to the bundle started with. Equal
signing times are not a rollback: the same bundle reloaded, or one signed the same second.
Unsigned bundles (no verification key) have no trustworthy time and are not guarded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from policy_service.bundles.files import BundleFiles
from policy_service.bundles.reload import BundleLoad
from policy_service.errors import BundleError, BundleProblem, ConfigError
from policy_service.policy.model import CompiledBundle

__all__ = [
    "STATE_DIR_ENV_VAR",
    "Floor",
    "RollbackGuard",
    "RollbackRefused",
    "default_state_file",
    "read_floor",
    "write_floor",
]

log = logging.getLogger("policy_service.rollback")

STATE_DIR_ENV_VAR = "POLICY_SERVICE_STATE_DIR"
_KEYS = {"revision", "signed_at"}


class RollbackRefused(BundleError):
    """A validly signed bundle older than the floor: refused like any bad bundle."""

    def __init__(self, problems: Sequence[BundleProblem]) -> None:
        super().__init__(problems)
        # Not "bundle is invalid": it is valid, and that is exactly what makes it dangerous.
        Exception.__init__(self, "\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True)
class Floor:
    """The newest bundle put into service: nothing signed before ``signed_at`` may follow."""

    revision: str
    signed_at: datetime

    @classmethod
    def of(cls, bundle: CompiledBundle) -> Floor | None:
        if bundle.signed_at is None:
            return None
        return cls(bundle.revision, bundle.signed_at)

    def describe(self) -> str:
        return f"revision {self.revision} signed at {_rfc3339(self.signed_at)}"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_state_file(location: str, environ: Mapping[str, str]) -> Path:
    """Where the floor of the bundle at ``location`` is kept unless ``--rollback-state`` says.

    One file per bundle location, so gateways on one host serving different bundles keep
    apart floors; in ``$POLICY_SERVICE_STATE_DIR``, else the XDG state directory.
    """
    base = environ.get(STATE_DIR_ENV_VAR)
    if base:
        folder = Path(base)
    else:
        xdg = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        folder = Path(xdg) / "policy-service"
    if "://" not in location:
        location = str(Path(location).resolve())
    digest = hashlib.sha256(location.encode("utf-8")).hexdigest()[:16]
    return folder / f"rollback-{digest}.json"


def read_floor(path: Path) -> Floor | None:
    """The floor recorded in ``path``; None when there is no such file. Anything else that
    is wrong with it raises ``ConfigError``: protection must not vanish silently."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"rollback state {path} cannot be read ({reason})") from None
    try:
        document = json.loads(text)
        if not isinstance(document, dict) or set(document) != _KEYS:
            raise ValueError
        revision, signed_at = document["revision"], document["signed_at"]
        if not isinstance(revision, str) or not isinstance(signed_at, str):
            raise ValueError
        moment = datetime.fromisoformat(signed_at)
        if moment.utcoffset() is None:
            raise ValueError
    except (ValueError, RecursionError):
        raise ConfigError(
            f"rollback state {path} is corrupt (expected a JSON object with exactly "
            "'revision' and 'signed_at'); fix or remove it, knowing that removing it lets "
            "any older signed bundle load"
        ) from None
    return Floor(revision, moment)


def write_floor(path: Path, floor: Floor) -> None:
    """Replace ``path`` whole: a crash leaves the old floor or the new one, never neither."""
    document = {"revision": floor.revision, "signed_at": _rfc3339(floor.signed_at)}
    data = (json.dumps(document, sort_keys=True) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per writer: the workers of serve --workers may write at once.
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"rollback state {path} cannot be written ({exc.strerror})") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigError(f"rollback state {path} cannot be written ({exc.strerror})") from None


class RollbackGuard:
    """Refuses bundles signed before the floor, and raises the floor as newer ones serve.

    ``check`` goes in the load (so a refusal is a refused reload, logged and counted like
    any other); ``accepted`` is called once a bundle is in service, and persists the floor.
    """

    def __init__(self, state_file: Path, floor: Floor | None) -> None:
        self.state_file = state_file
        self.floor = floor

    @classmethod
    def open(cls, state_file: Path) -> RollbackGuard:
        return cls(state_file, read_floor(state_file))

    def check(self, bundle: CompiledBundle, source: str) -> None:
        candidate = Floor.of(bundle)
        if candidate is None or self.floor is None:
            return
        if candidate.signed_at < self.floor.signed_at:
            raise RollbackRefused(
                [
                    BundleProblem(
                        source,
                        "",
                        f"rollback refused: {candidate.describe()} is older than "
                        f"{self.floor.describe()}, the newest served (re-sign it, or restart "
                        "with --allow-rollback, to roll back on purpose)",
                    )
                ]
            )

    def guarded(self, load: BundleLoad) -> BundleLoad:
        """``load``, refusing what ``check`` refuses."""

        def guarded_load(files: BundleFiles) -> CompiledBundle:
            bundle = load(files)
            self.check(bundle, files.source)
            return bundle

        return guarded_load

    def allow(self, bundle: CompiledBundle) -> None:
        """``--allow-rollback``: the operator means this bundle; it becomes the floor."""
        candidate = Floor.of(bundle)
        if candidate is None or self.floor is None:
            return
        if candidate.signed_at < self.floor.signed_at:
            log.warning(
                "rollback allowed by --allow-rollback: serving %s, older than %s; the floor "
                "is now this bundle",
                candidate.describe(),
                self.floor.describe(),
            )
            self.floor = candidate
            write_floor(self.state_file, candidate)

    def accepted(self, bundle: CompiledBundle) -> None:
        """``bundle`` is in service: raise the floor to it, here and in the state file.

        Raises ``ConfigError`` when the file cannot be written; at start that stops the
        process (protection across restarts was asked for and cannot be given)."""
        candidate = Floor.of(bundle)
        if candidate is None:
            return
        if self.floor is not None and candidate.signed_at <= self.floor.signed_at:
            return
        self.floor = candidate
        # Another worker of serve --workers may have recorded a newer one meanwhile.
        with_disk = read_floor(self.state_file)
        if with_disk is not None and with_disk.signed_at >= candidate.signed_at:
            return
        write_floor(self.state_file, candidate)
