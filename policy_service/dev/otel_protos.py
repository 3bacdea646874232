"""Put back opentelemetry-proto's modules when xds-protos has overwritten them.

Both wheels install ``opentelemetry/proto/.../*_pb2.py``: xds-protos carries an old copy
(from before ``InstrumentationScope``), and whichever wheel pip installs last wins. pip
installs xds-protos last, so the OTLP exporter then fails to import and an OTLP receiver
would miss every span (the old ``trace_pb2`` has no ``scope_spans``). Envoy's own protos
only use messages both copies have, so reinstalling opentelemetry-proto fixes both sides.

    python -m policy_service.dev.otel_protos          # repair if needed
    python -m policy_service.dev.otel_protos --check  # exit 1 if broken
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import subprocess
import sys

REPAIR_COMMAND = "python -m policy_service.dev.otel_protos"


def otel_protos_intact() -> bool:
    """True when the OTel proto modules on disk are opentelemetry-proto's own."""
    module = importlib.import_module("opentelemetry.proto.common.v1.common_pb2")
    return hasattr(module, "InstrumentationScope")


def repair() -> None:
    version = importlib.metadata.version("opentelemetry-proto")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--force-reinstall",
            "--no-deps",
            f"opentelemetry-proto=={version}",
        ],
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REPAIR_COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if broken")
    args = parser.parse_args(argv)
    if otel_protos_intact():
        print("opentelemetry-proto modules are intact")
        return 0
    if args.check:
        print(f"opentelemetry-proto modules were overwritten by xds-protos; run {REPAIR_COMMAND}")
        return 1
    repair()
    print("reinstalled opentelemetry-proto over xds-protos' older copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
