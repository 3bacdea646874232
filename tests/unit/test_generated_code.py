"""Generated code is never edited by hand: regenerating must reproduce what is committed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_protos_match_the_schema(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), str(tmp_path)], check=True
    )
    committed = ROOT / "policy_service" / "gen"
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "protoc generated nothing"
    # Each published format: its Python module, and the JSON Schema editors validate with.
    for module in ("bundle/v1/bundle", "cases/v1/cases"):
        for suffix in ("_pb2.py", "_pb2.pyi", ".schema.json"):
            assert Path("policy_service", f"{module}{suffix}") in fresh, f"{module}{suffix}"
    for relative in fresh:
        assert (committed / relative).read_bytes() == (tmp_path / relative).read_bytes(), (
            f"{relative} is stale: run `python protos/generate.py`"
        )
