"""Every bundle validation error has a fixture with its exact message pinned.

Each file in tests/fixtures/bundles/invalid/ starts with one ``# expect: <path>: <message>``
line per problem the loader must report, in order. The messages are part of the product:
security teams read them, so a change to one is a deliberate, reviewed change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_service.bundles.loader import load_bundle
from policy_service.errors import BundleError

INVALID = Path(__file__).parents[2] / "fixtures" / "bundles" / "invalid"
FIXTURES = sorted(INVALID.glob("*.yaml"))


def expected_problems(path: Path) -> list[str]:
    prefix = "# expect: "
    return [
        line[len(prefix) :] for line in path.read_text().splitlines() if line.startswith(prefix)
    ]


def test_there_is_a_fixture_per_error() -> None:
    assert len(FIXTURES) >= 25


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda path: path.stem)
def test_invalid_bundle_reports_exact_messages(fixture: Path) -> None:
    expected = expected_problems(fixture)
    assert expected, f"{fixture.name} has no '# expect:' lines"
    with pytest.raises(BundleError) as caught:
        load_bundle(fixture, environ={})
    problems = caught.value.problems
    assert all(problem.file == str(fixture) for problem in problems)
    reported = [f"{p.path}: {p.message}" if p.path else p.message for p in problems]
    assert reported == expected


def test_error_text_lists_every_problem_with_file_and_path() -> None:
    fixture = INVALID / "many_problems.yaml"
    with pytest.raises(BundleError) as caught:
        load_bundle(fixture, environ={})
    text = str(caught.value)
    assert text.startswith("bundle is invalid (4 problems):")
    assert f"{fixture}: upstreams[0].protocol: must be one of: mcp, a2a, http" in text


def test_unreadable_file_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as caught:
        load_bundle(tmp_path / "absent.yaml")
    assert caught.value.problems[0].message == "does not exist"


def test_hs256_secret_comes_from_the_environment(tmp_path: Path) -> None:
    bundle_file = tmp_path / "bundle.yaml"
    bundle_file.write_text(
        "version: v1\n"
        "issuers:\n"
        "  - {name: corp, issuer: 'https://idp.example.com', algorithms: [HS256],"
        " hs256_secret_env: CORP_SECRET}\n"
        "upstreams:\n"
        "  - {name: a, path_prefix: /a/, protocol: http, resource: 'https://gw.example.com/a'}\n"
    )
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle_file, environ={})
    assert [str(p.message) for p in caught.value.problems] == [
        "environment variable 'CORP_SECRET' is not set or empty"
    ]
    bundle = load_bundle(bundle_file, environ={"CORP_SECRET": "s3cret-value"})
    assert bundle.issuers[0].hs256_secret == b"s3cret-value"
