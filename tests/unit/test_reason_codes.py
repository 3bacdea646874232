"""The README's table of denial reasons lists every reason the code can give, and only those.

The reasons are read from the source, not from a list kept beside it: every literal reason
given to a denial's makers (``deny``/``Deny``, ``Malformed``, ``IdentityFailure``, the
credential extractor's results and the parsers' helpers) and every ``RefusalReason``. Each
one's HTTP status is derived the way the answer is rendered, and must be the table's.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from policy_service.authorization.policy import RefusalReason
from policy_service.decisions.model import ANSWERS, DenyKind

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "policy_service"
README = ROOT / "README.md"
TABLE_MARKER = "<!-- every denial reason; tests/unit/test_reason_codes.py checks"

# Who makes a reason, where its reason argument is, and the status a denial with it gets.
# None: the status comes from the call (deny's DenyKind, Malformed's http_status).
_MAKERS: dict[str, tuple[int, int | None]] = {
    "deny": (1, None),
    "Deny": (1, None),
    "Malformed": (0, None),
    "_invalid": (0, 400),  # request.mcp: a Malformed with the default status
    "_header_error": (0, 400),
    "_JsonError": (0, 400),  # request.jsonbody: raised, then made a Malformed
    "IdentityFailure": (0, ANSWERS[DenyKind.INVALID_CREDENTIAL].http_status),
    "UnusableCredential": (0, ANSWERS[DenyKind.INVALID_CREDENTIAL].http_status),
    "AmbiguousCredential": (0, ANSWERS[DenyKind.INVALID_REQUEST].http_status),
    "GuardRefusal": (0, None),  # responses.guard: the kind is its third argument
}
# A reason handed on from one made above (a credential's, a parse result's, a refusal's).
_HANDED_ON = re.compile(r"(\w+\.)*reason(\.value)?")


def _name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _status(name: str, call: ast.Call, fixed: int | None) -> int:
    if fixed is not None:
        return fixed
    if name == "GuardRefusal":
        kind = call.args[2]
        assert isinstance(kind, ast.Attribute), ast.unparse(call)
        return ANSWERS[DenyKind[kind.attr]].http_status
    if name == "Malformed":
        given = next((k.value for k in call.keywords if k.arg == "http_status"), None)
        return given.value if isinstance(given, ast.Constant) else 400
    kind = call.args[0]
    assert isinstance(kind, ast.Attribute), ast.unparse(call)
    deny_kind = DenyKind[kind.attr]
    if deny_kind is DenyKind.MALFORMED:
        return 400
    return ANSWERS[deny_kind].http_status


def reasons_in_code() -> dict[str, set[int]]:
    """Every denial reason in the package, with the HTTP statuses it is answered with."""
    found: dict[str, set[int]] = defaultdict(set)
    unreadable: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "gen" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or (name := _name(node)) not in _MAKERS:
                continue
            index, fixed = _MAKERS[name]
            keyword = next((k.value for k in node.keywords if k.arg == "reason"), None)
            reason = keyword or (node.args[index] if len(node.args) > index else None)
            if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
                found[reason.value].add(_status(name, node, fixed))
            elif reason is None or not _HANDED_ON.fullmatch(ast.unparse(reason)):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                unreadable.append(f"{where}: {ast.unparse(node)[:80]}")
    assert not unreadable, (
        "denial reasons this test cannot read (give the reason as a string literal):\n"
        + "\n".join(unreadable)
    )
    for refusal in RefusalReason:
        found[refusal.value].add(ANSWERS[DenyKind.FORBIDDEN].http_status)
    return dict(found)


def readme_table() -> dict[str, int]:
    text = README.read_text(encoding="utf-8")
    assert TABLE_MARKER in text, "README.md has lost its table of denial reasons"
    lines = text.split(TABLE_MARKER, 1)[1].split("\n")[1:]
    assert lines[0].startswith("| reason | HTTP | meaning |"), lines[0]
    table: dict[str, int] = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        match = re.fullmatch(r"\| `([a-z0-9_]+)` \| (\d{3}) \| .+ \|", line)
        assert match, f"README table row not as `reason` | status | meaning: {line}"
        assert match[1] not in table, f"{match[1]} is in the README table twice"
        table[match[1]] = int(match[2])
    return table


def test_the_reader_finds_reasons_of_every_kind_of_maker() -> None:
    found = reasons_in_code()
    for reason in (
        "missing_credential",  # deny(...) in the pipeline
        "internal_error",  # Deny(...) in the server
        "token_expired",  # IdentityFailure
        "unsupported_auth_scheme",  # UnusableCredential
        "token_in_query",  # AmbiguousCredential
        "invalid_json",  # Malformed and _JsonError
        "header_mismatch",  # _header_error
        "empty_batch",  # _invalid
        "denied_by_rule",  # RefusalReason
    ):
        assert reason in found, reason
    assert found["method_not_allowed"] == {405}
    assert found["rate_limited"] == {429}


def test_every_denial_reason_is_in_the_readme_table_with_its_status() -> None:
    found, table = reasons_in_code(), readme_table()
    missing = sorted(set(found) - set(table))
    assert not missing, f"denial reasons missing from README.md's table: {missing}"
    stale = sorted(set(table) - set(found))
    assert not stale, f"README.md's table lists reasons the code never gives: {stale}"
    wrong = {reason: (table[reason], found[reason]) for reason in table}
    wrong = {reason: seen for reason, seen in wrong.items() if seen[0] not in seen[1]}
    assert not wrong, f"README status (table, from the code) differs: {wrong}"
