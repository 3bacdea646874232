"""A condition taken apart for ``explain``: the values it read, and the part that decided.

The values are looked up where the expression names them (``args.path``,
``claims["org"].tier``), shown as JSON, cut when long, and replaced by ``[redacted]`` under
a sensitive key (the audit's redact keys: ``token``, ``password``...). The parts are the
operands of the expression's top-level ``||`` (or, without one, ``&&``), each evaluated on
its own: the first true operand decides an ``||``, the first false one an ``&&``, and
where none does, the first that failed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy_service.policy.conditions import (
    Condition,
    ConditionFailure,
    ConditionInputs,
    ConditionSyntaxError,
    compile_condition,
)

# A variable and the keys after it; a name followed by "(" is a method call, not a key.
_REFERENCE = re.compile(
    r"\b(args|claims|principal|request)((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*\b(?!\s*\()"
    r"|\s*\[\s*(?:\"[^\"]*\"|'[^']*')\s*\])+)"
)
_STEP = re.compile(r"\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(?:\"([^\"]*)\"|'([^']*)')\s*\]")
_ABSENT = object()
_MAX_SHOWN = 60


@dataclass(frozen=True, slots=True)
class PartResult:
    source: str
    result: bool | ConditionFailure


@dataclass(frozen=True, slots=True)
class ConditionView:
    values: tuple[tuple[str, str], ...]  # (reference, shown value)
    operator: str | None  # "||", "&&" or None for a single part
    parts: tuple[PartResult, ...]
    deciding: int | None  # index into parts


def view_condition(
    condition: Condition, inputs: ConditionInputs, redact_keys: frozenset[str]
) -> ConditionView:
    return ConditionView(
        _values(condition.source, inputs, redact_keys), *_parts(condition.source, inputs)
    )


def _values(
    source: str, inputs: ConditionInputs, redact_keys: frozenset[str]
) -> tuple[tuple[str, str], ...]:
    roots: Mapping[str, Any] = {
        "args": inputs.args,
        "claims": inputs.claims,
        "principal": inputs.principal,
        "request": inputs.request,
    }
    shown: dict[str, str] = {}
    for found in _REFERENCE.finditer(source):
        keys = [m[1] or m[2] or m[3] or "" for m in _STEP.finditer(found[2])]
        name = found[1] + "".join(f".{key}" for key in keys)
        if name in shown:
            continue
        value: Any = roots[found[1]]
        for key in keys:
            value = value.get(key, _ABSENT) if isinstance(value, Mapping) else _ABSENT
            if value is _ABSENT:
                break
        if any(key.lower() in redact_keys for key in keys):
            shown[name] = "[redacted]"
        elif value is _ABSENT:
            shown[name] = "(absent)"
        else:
            text = json.dumps(value, default=str, ensure_ascii=False)
            shown[name] = text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
    return tuple(shown.items())


def _parts(
    source: str, inputs: ConditionInputs
) -> tuple[str | None, tuple[PartResult, ...], int | None]:
    for operator in ("||", "&&"):
        pieces = _split_top_level(source, operator)
        if len(pieces) > 1:
            break
    else:
        return None, (), None
    results: list[PartResult] = []
    for piece in pieces:
        try:
            part = compile_condition(piece)
        except ConditionSyntaxError:
            return None, (), None  # not separable as written: show the whole only
        results.append(PartResult(piece.strip(), part.evaluate(inputs)))
    # An || is decided by its first true operand (else by the first that failed: a failure
    # is what made the whole fail); an && by its first operand that is not true.
    wanted = (True,) if operator == "||" else (False,)
    deciding = next(
        (index for index, outcome in enumerate(results) if outcome.result in wanted), None
    )
    if deciding is None:
        deciding = next(
            (
                i
                for i, outcome in enumerate(results)
                if isinstance(outcome.result, ConditionFailure)
            ),
            None,
        )
    return operator, tuple(results), deciding


def _split_top_level(source: str, operator: str) -> list[str]:
    """``source`` cut at ``operator`` outside brackets and string literals."""
    pieces: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    index = 0
    while index < len(source):
        char = source[index]
        if quote is not None:
            if char == "\\":
                index += 2
                continue
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and source.startswith(operator, index):
            pieces.append(source[start:index])
            index += len(operator)
            start = index
            continue
        index += 1
    pieces.append(source[start:])
    return pieces
