"""Keep opentelemetry-proto's modules in place when xds-protos has overwritten them.

Both wheels install ``opentelemetry/proto/.../*_pb2.py``: xds-protos carries an old copy
(from before ``InstrumentationScope``), and whichever wheel pip installs last wins. pip
installs in layers, packages with the fewest dependencies first; opentelemetry-proto (which
needs only protobuf) comes a layer before xds-protos (which needs grpcio too), so a plain
``pip install`` always leaves xds-protos' copy. The OTLP exporter then fails to import, and
an OTLP receiver would miss every span (the old ``trace_pb2`` has no ``scope_spans``).
No dependency or version choice changes that order, and the types cannot be loaded from
anywhere else, so the service repairs the install itself when tracing is turned on:
it reinstalls opentelemetry-proto at its installed version, before any of those modules is
imported, and logs that it did. Envoy's own protos only use messages both copies have.

    python -m policy_service.otel.protos          # repair if needed (images, CI)
    python -m policy_service.otel.protos --check  # exit 1 if broken
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from policy_service.errors import ConfigError

log = logging.getLogger("policy_service.telemetry")

REPAIR_COMMAND = "python -m policy_service.otel.protos"

# A module of each copy, and what only opentelemetry-proto's has.
_MARKERS = {
    "opentelemetry.proto.common.v1.common_pb2": b"InstrumentationScope",
    "opentelemetry.proto.trace.v1.trace_pb2": b"scope_spans",
}

Installer = Callable[[Sequence[str]], int]


def otel_protos_intact() -> bool:
    """True when the OTel proto modules on disk are opentelemetry-proto's own.

    Read from the files, never imported: once the old modules are imported their
    descriptors are in protobuf's pool for good, and a repair could not take effect.
    """
    for module, marker in _MARKERS.items():
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            return False
        if marker not in Path(spec.origin).read_bytes():
            return False
    return True


def _pip(arguments: Sequence[str]) -> int:
    return subprocess.run(
        [sys.executable, "-m", "pip", *arguments],
        capture_output=True,
        check=False,
        timeout=300,
    ).returncode


def ensure_otel_protos(install: Installer = _pip) -> bool:
    """Repair the modules if needed; True when a repair was made (and logged)."""
    if otel_protos_intact():
        return False
    if any(module in sys.modules for module in _MARKERS):
        raise ConfigError(
            "xds-protos has overwritten opentelemetry-proto's modules and they are already "
            f"loaded in this process; run {REPAIR_COMMAND}, then start again"
        )
    try:
        version = importlib.metadata.version("opentelemetry-proto")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "opentelemetry-proto is not installed; reinstall policy-service"
        ) from None
    requirement = f"opentelemetry-proto=={version}"
    status = install(
        [
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--force-reinstall",
            "--no-deps",
            requirement,
        ]
    )
    importlib.invalidate_caches()
    if status != 0 or not otel_protos_intact():
        raise ConfigError(
            "xds-protos has overwritten opentelemetry-proto's modules, so the OTLP exporter "
            f"cannot load, and reinstalling {requirement} failed (pip exit {status}); run "
            f"{REPAIR_COMMAND} where pip can reach a package index"
        )
    log.warning(
        "reinstalled %s: xds-protos had overwritten its modules, which the OTLP exporter "
        "needs (a known clash between the two wheels; see policy_service.otel.protos)",
        requirement,
    )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=REPAIR_COMMAND,
        description="Put back opentelemetry-proto's modules when xds-protos has overwritten them.",
    )
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if broken")
    args = parser.parse_args(argv)
    if otel_protos_intact():
        print("opentelemetry-proto modules are intact")
        return 0
    if args.check:
        print(f"opentelemetry-proto modules were overwritten by xds-protos; run {REPAIR_COMMAND}")
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ensure_otel_protos()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
