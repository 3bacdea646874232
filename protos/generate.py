"""Regenerate the Python code for the project's protos, and the JSON Schemas of the bundle
and of the policy test case file (``json_schema.py``), into policy_service/gen/.

Run from the repository root: ``python protos/generate.py``. The generated files are
committed and never edited by hand; a test checks they match what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc
from json_schema import write_schemas  # protos/ is on sys.path: this runs as a script

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "policy_service" / "gen"


def proto_files() -> list[str]:
    return sorted(str(path.relative_to(PROTOS)) for path in PROTOS.rglob("*.proto"))


def generate(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # grpcio-tools carries the well-known types (Timestamp, Struct) the protos import.
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        *proto_files(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # The JSON Schemas editors validate bundles and case files with; each ships beside its
    # generated module (bundle_pb2, cases_pb2).
    write_schemas(out)
    # Generated modules live in plain packages so setuptools ships them.
    for directory in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__":
            (directory / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
