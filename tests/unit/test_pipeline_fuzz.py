"""A short run of the pipeline fuzzer: generated checks never raise and always decide."""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.pipeline_fuzz import run


async def test_generated_checks_all_end_in_a_decision(tmp_path: Path) -> None:
    outcomes = await run(3000, seed=7, workdir=tmp_path)
    assert sum(outcomes.values()) == 3000
    # The generator reaches every kind of outcome, or it tests less than it claims.
    kinds = {outcome.split(":", 1)[0] for outcome in outcomes}
    assert kinds == {"allow", "deny", "serve"}, outcomes
    reasons = {outcome.split(":", 1)[1] for outcome in outcomes}
    for reason in ("duplicate_key", "token_in_query", "unexpected_body", "unknown_upstream"):
        assert reason in reasons, sorted(reasons)
