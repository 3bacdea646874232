"""Rule conditions: a rule's ``when:`` expression in CEL (Common Expression Language).

A rule applies only when its condition evaluates to ``true``, e.g.::

    when: 'args.path.startsWith("/public/") && !args.path.contains("..")'
    when: '"admin" in principal.scopes || claims.org.tier == "gold"'

What a condition can read (nothing else: any other name is refused when the bundle loads):

``args``
    The call's arguments: ``params.arguments`` of an MCP ``tools/call`` or ``prompts/get``,
    ``{}`` for every other call. Values are what the client sent, as JSON.
``claims``
    The verified JWT's claims; ``{}`` for API keys.
``principal``
    ``subject``, ``client_id``, ``issuer`` (the bundle's issuer name, ``"api-key"`` for
    keys), ``credential`` (``"jwt"`` or ``"api_key"``) and ``scopes`` (a list of strings).
``request``
    ``upstream``, ``protocol`` (``"mcp"``, ``"a2a"`` or ``"http"``), ``method`` (the
    JSON-RPC method), ``target`` (the tool, prompt, resource or agent), ``http_method``
    and ``path``.

Semantics a bundle author needs:

- A missing key is an error, not ``false``: ``args.path.startsWith("/p")`` fails when the
  call has no ``path``. Guard optional keys with ``has()``:
  ``has(args.path) && args.path.startsWith("/p")``.
- A condition that fails (missing key, wrong type, integer overflow, division by zero...)
  never lets a call in: the policy counts it as false for an allow rule and as true for a
  deny rule. ``&&`` and ``||`` absorb errors the CEL way, in either order:
  ``false && <error>`` is false and ``<error> || true`` is true.
- The result must be a bool. An expression that can only be something else
  (``args.path``, ``size(args.items)``) is refused at load; one whose type depends on the
  request fails at evaluation.
- Types are strict: ``1 == 1.0`` and ``"1" == 1`` are refused at load (no overload). A
  value from the request is dynamic, so ``args.count == 3.0`` and ``args.ratio < 1``
  compare numerically at run time; a bool is never equal to a number.
- JSON numbers: an integer that fits int64 is ``int``, one up to 2^64 - 1 is ``uint``, a
  bigger one and any number with a fraction or exponent is ``double``. Arithmetic on
  ``int`` that overflows is an error.
- ``matches()`` takes an RE2 regular expression (no backreferences or lookaround).
  ``size()`` of a string counts code points. The string extension is loaded
  (``lowerAscii()``, ``split()``, ``replace()``, ``indexOf()``, ``join()``...).

Failure reasons and load-time messages name keys, types and columns, never a value from the
request or the claims (which may be secrets); a key name appears only when the expression
itself spells it out.

The runtime is Google's C++ CEL implementation (``cel-expr-python``), with its type checker:
``bench/cel_compare.py`` compares it with the other CEL libraries on PyPI.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Final

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings

CONDITION_VARIABLES = ("args", "claims", "principal", "request")
MAX_CONDITION_LENGTH = 2048  # characters

__all__ = [
    "CONDITION_VARIABLES",
    "MAX_CONDITION_LENGTH",
    "Condition",
    "ConditionFailure",
    "ConditionInputs",
    "ConditionSyntaxError",
    "compile_condition",
]


class ConditionSyntaxError(Exception):
    """A condition the bundle can't use. ``message`` is one short line for the bundle's
    validation report; it quotes nothing but the expression's own text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ConditionFailure:
    """A condition that could not be evaluated to a bool. ``reason`` is safe to log and to
    show: it names keys and types, never a value from the request or the claims."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConditionInputs:
    args: Mapping[str, Any]  # tools/call or prompts/get arguments, {} otherwise
    claims: Mapping[str, Any]  # verified JWT claims; {} for API keys
    principal: Mapping[str, Any]  # subject, client_id, issuer, credential, scopes
    request: Mapping[str, Any]  # upstream, protocol, method, target, http_method, path


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition. Immutable; the compiled program is shared by concurrent
    checks (the C++ runtime keeps no state in it between evaluations)."""

    source: str
    _expression: Any = field(repr=False, compare=False)
    # Identifiers and string literals of the source: the key names a failure may quote.
    _spelled: frozenset[str] = field(repr=False, compare=False)
    # Whether the expression reads `args`: listing decides without arguments, and must
    # know which conditions it cannot evaluate.
    reads_arguments: bool = True
    # Whether the type checker could only say "dyn" (a value read from the request, such
    # as `principal.client_id`): such a condition fails at run time unless it is a bool.
    result_is_dyn: bool = False

    def evaluate(self, inputs: ConditionInputs) -> bool | ConditionFailure:
        """True or false, or why not. Never raises."""
        try:
            # The runtime wraps these dicts and converts values as the expression reads
            # them, so a request pays only for what its conditions look at.
            result = self._expression.eval(
                data={
                    "args": inputs.args,
                    "claims": inputs.claims,
                    "principal": inputs.principal,
                    "request": inputs.request,
                }
            )
            value = result.value()
            if type(value) is bool:
                return value
            kind = result.type()
            if kind == _ERROR and _CONVERSION_ERROR.match(str(value)):
                # Rare: a value the runtime can't take as it is (an int beyond 64 bits, a
                # tuple, a non-dict mapping). Convert everything in one pass and retry.
                result = self._expression.eval(data=_plain_inputs(inputs))
                value = result.value()
                if type(value) is bool:
                    return value
                kind = result.type()
            if kind == _ERROR:
                return ConditionFailure(_failure_reason(str(value), self._spelled))
            return ConditionFailure(f"result is not a bool (got {_type_name(kind)})")
        except _Unsupported as exc:
            return ConditionFailure(f"unsupported value of type {exc.type_name} in the inputs")
        except Exception:
            # Fail closed with nothing from the library's message: it may quote values.
            return ConditionFailure("evaluation error")


def compile_condition(source: str) -> Condition:
    """Parse and type-check ``source``; raise ConditionSyntaxError if a bundle can't use it."""
    if not source.strip():
        raise ConditionSyntaxError("must not be empty")
    if len(source) > MAX_CONDITION_LENGTH:
        raise ConditionSyntaxError(
            f"is {len(source)} characters long; the limit is {MAX_CONDITION_LENGTH}"
        )
    try:
        with _COMPILE_LOCK:
            expression = _ENV.compile(source)
    except Exception as exc:
        raise ConditionSyntaxError(_syntax_message(str(exc), source)) from exc
    result_type = expression.return_type()
    if result_type not in (_BOOL, _DYN):
        raise ConditionSyntaxError(f"must evaluate to a bool, not {_type_name(result_type)}")
    return Condition(
        source,
        expression,
        _spelled_names(source),
        _reads_arguments(source),
        result_is_dyn=result_type == _DYN,
    )


def _reads_arguments(source: str) -> bool:
    """Whether ``source`` refers to ``args``: it does exactly when it fails to compile in
    an environment without that variable (a string literal "args" is not a reference)."""
    try:
        with _COMPILE_LOCK:
            _ENV_WITHOUT_ARGS.compile(source)
    except Exception:
        return True
    return False


# --- the environment ----------------------------------------------------------------------

# Every variable is map(string, dyn): the checker then knows the four names (an unknown
# one, or a typo in a function name, fails at load) while fields stay dynamic, because
# arguments and claims have no schema.
_DYN_MAP: Final = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
_ENV: Final = cel.NewEnv(
    variables=dict.fromkeys(CONDITION_VARIABLES, _DYN_MAP),
    extensions=[ext_strings.ExtStrings()],
)
_ENV_WITHOUT_ARGS: Final = cel.NewEnv(
    variables={name: _DYN_MAP for name in CONDITION_VARIABLES if name != "args"},
    extensions=[ext_strings.ExtStrings()],
)
# The library doesn't say compiling is thread-safe; compiles happen at bundle load only.
_COMPILE_LOCK: Final = threading.Lock()
_BOOL: Final = cel.Type.BOOL
_DYN: Final = cel.Type.DYN
_ERROR: Final = cel.Type.ERROR


def _type_name(kind: Any) -> str:
    # "STRING" -> "string", "LIST<DYN>" -> "list", "map<dyn, dyn>" -> "map"
    name = str(kind.name()).split("<", 1)[0].lower()
    return "null" if name.startswith("null") else name


# --- load-time messages -------------------------------------------------------------------

# One error of the library's report: "ERROR: <input>:LINE:COLUMN: message" (then a snippet
# of the source and a caret line, which we drop: the report must be one line).
_REPORT_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)")
_UNDECLARED = re.compile(r"undeclared reference to '([^']*)'")
_EXPECTING_SET = re.compile(r" expecting \{.*\}$")
_VARIABLE_LIST = ", ".join(CONDITION_VARIABLES[:-1]) + " or " + CONDITION_VARIABLES[-1]


def _syntax_message(report: str, source: str) -> str:
    found = _REPORT_ERROR.search(report)  # the first error is the one to fix first
    if found is None:
        return "is not a valid CEL expression"
    line, column, message = int(found[1]), int(found[2]), found[3].strip()
    where = f"line {line}, column {column}" if "\n" in source else f"column {column}"
    undeclared = _UNDECLARED.match(message)
    if undeclared:
        name = undeclared[1]
        # The checker points a call's error at its "(": then the name is a function.
        if _char_at(source, line, column) == "(":
            return f"unknown function '{name}' at {where}"
        return f"unknown variable '{name.split('.', 1)[0]}'; use {_VARIABLE_LIST}"
    if message.startswith("Syntax error: "):
        detail = _EXPECTING_SET.sub("", message.removeprefix("Syntax error: "))
        if detail == "mismatched input '<EOF>'":
            detail = "unexpected end of expression"
        return f"syntax error at {where}: {_shorten(detail)}"
    kind = "type error" if "overload" in message else "error"
    return f"{kind} at {where}: {_shorten(message)}"


def _char_at(source: str, line: int, column: int) -> str:
    lines = source.split("\n")
    if not 1 <= line <= len(lines) or not 1 <= column <= len(lines[line - 1]):
        return ""
    return lines[line - 1][column - 1]


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- evaluation failures ------------------------------------------------------------------

_CONVERSION_ERROR = re.compile(
    r"INVALID_ARGUMENT: (?:Integer value .* out of range|Non-CEL value type|"
    r"Unexpected value type)"
)
_MISSING_KEY = re.compile(r'NOT_FOUND: Key not found in map : "((?:[^"\\]|\\.)*)"$')
# A function or operator name (_+_, @in, _[_]) and argument types: nothing from the inputs.
_NO_OVERLOAD = re.compile(r"No matching overloads found : ([\w.@!<>=+\-*/%?:\[\](), ]{1,120})$")
_CANNOT_CONVERT = re.compile(r"cannot convert (\w+) to (\w+)$")
_CONVERSION_FROM = re.compile(r"Type conversion error from '(\w+)' to '(\w+)'$")
_IDENTIFIER_OR_LITERAL = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*|\"((?:[^\"\\\n]|\\.)*)\"|'((?:[^'\\\n]|\\.)*)'"
)

# Library messages that quote no value, and what to say instead.
_FIXED_REASONS: Final = (
    ("Key not found in map", "no such key"),  # a key that isn't a string
    ("unsigned integer overflow", "unsigned integer overflow"),
    ("integer overflow", "integer overflow"),
    ("divide by zero", "division by zero"),
    ("modulus by zero", "modulus by zero"),
    ("invalid regular expression", "invalid regular expression"),  # quotes the pattern
    ("Index error: index=", "list index out of range"),  # quotes index and size
    ("Index error", "list index is not an int"),
    ("Applying SELECT to non-message type", "field selection on a value that is not a map"),
    ("String to Timestamp conversion failed", "cannot convert string to timestamp"),
    ("String to Duration conversion failed", "cannot convert string to duration"),
    ("timestamp overflow", "timestamp out of range"),
    ("duration overflow", "duration out of range"),
    ("out of int64 range", "double out of int range"),
    ("out of uint64 range", "double out of uint range"),
)


def _failure_reason(message: str, spelled: frozenset[str]) -> str:
    """The library's error, said without anything it quoted from the inputs."""
    missing = _MISSING_KEY.search(message)
    if missing:
        # A key the expression spells out is the author's; one computed from the request
        # (args[claims.sub]) is a value, and stays out.
        key = missing[1]
        return f"no such key '{key}'" if key in spelled else "no such key"
    if _CONVERSION_ERROR.match(message):
        return "unsupported value in the inputs"
    for needle, reason in _FIXED_REASONS:
        if needle in message:
            return reason
    converted = _CANNOT_CONVERT.search(message) or _CONVERSION_FROM.search(message)
    if converted:
        return f"cannot convert {converted[1]} to {converted[2]}"
    overload = _NO_OVERLOAD.search(message)
    if overload:
        # Function and type names only, e.g. "_+_(string, int64)".
        return f"no matching overload for {overload[1]}"
    return "evaluation error"


def _spelled_names(source: str) -> frozenset[str]:
    names = set()
    for found in _IDENTIFIER_OR_LITERAL.finditer(source):
        literal = found[1] if found[1] is not None else found[2]
        names.add(found[0] if literal is None else literal)
    return frozenset(names)


# --- the slow path's conversion -----------------------------------------------------------

_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1


class _Unsupported(Exception):  # an internal signal: never escapes evaluate()
    def __init__(self, value: object) -> None:
        super().__init__()
        self.type_name = type(value).__name__  # a type name, never the value


def _plain_inputs(inputs: ConditionInputs) -> dict[str, Any]:
    return {
        "args": _plain(inputs.args),
        "claims": _plain(inputs.claims),
        "principal": _plain(inputs.principal),
        "request": _plain(inputs.request),
    }


def _plain(value: Any) -> Any:
    """JSON-like values as the runtime takes them. Bool before int: bool is an int in Python,
    never in CEL."""
    if value is None or isinstance(value, bool | str | float | bytes):
        return value
    if isinstance(value, int):
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
        try:
            return float(value)  # like JSON numbers beyond 64 bits everywhere else
        except OverflowError:
            return float("inf") if value > 0 else float("-inf")
    if isinstance(value, Mapping):
        return {_plain_key(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Set):
        # Sets (a principal's scopes) have no order; sorted, a list is the same every time.
        return [_plain(item) for item in sorted(value, key=repr)]
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    raise _Unsupported(value)


def _plain_key(key: Any) -> Any:
    if isinstance(key, str | bool) or (isinstance(key, int) and _INT64_MIN <= key <= _UINT64_MAX):
        return key
    raise _Unsupported(key)
