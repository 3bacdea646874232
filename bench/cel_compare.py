"""Compare the CEL libraries on PyPI for policy-rule conditions: correctness, then speed.

    python bench/cel_compare.py            # every library importable in this interpreter
    python bench/cel_compare.py --quick    # fewer timing rounds

Candidates (each is optional; a missing one is reported and skipped):

  cel-expr-python             module ``cel_expr_python``  Google's C++ CEL runtime (pybind11)
  common-expression-language  module ``cel``              cel-rust bindings (PyO3)
  cel-python                  module ``celpy``            pure Python (lark parser)

To compare all three without touching the project venv:

    python3.11 -m venv /tmp/celcmp
    /tmp/celcmp/bin/pip install cel-expr-python common-expression-language cel-python
    /tmp/celcmp/bin/python bench/cel_compare.py

The probes are the expressions bundle authors write (string functions, ``in``, ``has()``,
missing keys, comprehensions, numeric typing, overflow, error absorption, timestamps, parse
and unknown-variable errors). Each has the CEL-spec outcome it should have; ``ok`` marks a
library that gives one of them. A checked environment (cel-expr-python) may reject a mixed
``int == double`` literal at compile time, which the spec allows.

Speed: per typical expression, the median compile time, then per call the median of
converting the request's Python dicts to the library's values, of evaluating on values
already converted, and of both together (what a request pays). Nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VARIABLES = ("args", "claims", "principal", "request")


class CompileError(Exception):
    """A library refused the expression before evaluation."""


class EvalError(Exception):
    """A library returned or raised a CEL error while evaluating."""


# --- activation --------------------------------------------------------------------------

PROBE_INPUTS: dict[str, Any] = {
    "args": {
        "path": "/public/readme.md",
        "mode": "r",
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "none": None,
        "items": [1, 2, 3],
        "big": 2**63 - 1,
        "name": "héllo wörld ✓",
        "nested": {"a": {"b": "deep"}},
    },
    "claims": {
        "sub": "user-1",
        "groups": ["eng", "ops"],
        "org": {"id": "acme", "tier": "gold"},
        "exp": 1_900_000_000,
    },
    "principal": {
        "subject": "user-1",
        "client_id": "ide",
        "issuer": "https://idp.example",
        "credential": "jwt",
        "scopes": ["fininfo:read", "admin"],
    },
    "request": {
        "upstream": "fininfo",
        "protocol": "mcp",
        "method": "tools/call",
        "target": "read_file",
        "http_method": "POST",
        "path": "/fininfo/mcp",
    },
}

# A realistic per-request activation for timing: ~10 claims, 3 arguments.
BENCH_INPUTS: dict[str, Any] = {
    "args": {"path": "/public/reports/q3.md", "mode": "r", "items": [1, 5, 9, 12]},
    "claims": {
        "iss": "https://idp.example",
        "sub": "4f1c2a9e-user",
        "aud": "fininfo",
        "exp": 1_900_000_000,
        "iat": 1_899_996_400,
        "email": "jane.doe@acme.com",
        "email_verified": True,
        "groups": ["eng", "ops", "oncall"],
        "org": {"id": "acme", "tier": "gold"},
        "scope": "fininfo:read fininfo:write",
    },
    "principal": {
        "subject": "4f1c2a9e-user",
        "client_id": "ide",
        "issuer": "https://idp.example",
        "credential": "jwt",
        "scopes": ["fininfo:read", "fininfo:write"],
    },
    "request": {
        "upstream": "fininfo",
        "protocol": "mcp",
        "method": "tools/call",
        "target": "read_file",
        "http_method": "POST",
        "path": "/fininfo/mcp",
    },
}

BENCH_EXPRESSIONS = {
    "path": 'args.path.startsWith("/public/") && !args.path.contains("..")',
    "scope": '"admin" in principal.scopes || (claims.org.tier == "gold" '
    '&& request.method == "tools/call")',
    "regex+all": 'claims.email.matches("^[a-z.]+@acme\\\\.com$") && args.items.all(x, x < 100)',
}

# --- probes ------------------------------------------------------------------------------

ERROR = "<error>"
COMPILE = "<compile error>"
ANY = "<any>"


@dataclass(frozen=True)
class Probe:
    what: str
    source: str
    expect: tuple[Any, ...]  # acceptable outcomes: a value, ERROR or COMPILE
    note: str = ""


PROBES: list[Probe] = [
    Probe("startsWith", 'args.path.startsWith("/public/")', (True,)),
    Probe("endsWith", 'args.path.endsWith(".md")', (True,)),
    Probe("contains", 'args.path.contains("..")', (False,)),
    Probe("matches (RE2)", 'args.path.matches("^/public/[a-z]+\\\\.md$")', (True,)),
    Probe("matches, bad regex", 'args.path.matches("(")', (ERROR, COMPILE)),
    Probe("size(unicode str)", "size(args.name) == 13", (True,), "code points"),
    Probe("unicode startsWith", 'args.name.startsWith("hé")', (True,)),
    Probe("string concat", '"/public/" + args.mode == "/public/r"', (True,)),
    Probe("in list (scopes)", '"admin" in principal.scopes', (True,)),
    Probe("in map (keys)", '"tier" in claims.org', (True,)),
    Probe("has() present", "has(args.path)", (True,)),
    Probe("has() absent", "has(args.missing)", (False,)),
    Probe("missing key", 'args.missing == "x"', (ERROR,), "must not be false"),
    Probe("has() guard", 'has(args.missing) && args.missing == "x"', (False,)),
    Probe("nested map", 'claims.org.tier == "gold"', (True,)),
    Probe("nested index", 'claims["org"]["id"] == "acme"', (True,)),
    Probe("deep nested", 'args.nested.a.b == "deep"', (True,)),
    Probe("all()", "args.items.all(x, x > 0)", (True,)),
    Probe("exists()", 'claims.groups.exists(g, g.startsWith("o"))', (True,)),
    Probe("filter().size()", "args.items.filter(x, x > 1).size() == 2", (True,)),
    Probe("list index out of range", "args.items[5] == 1", (ERROR,)),
    Probe("1 == 1.0 (literals)", "1 == 1.0", (True, COMPILE), "checker may refuse"),
    Probe("int arg == 3.0", "args.count == 3.0", (True,), "heterogeneous equality"),
    Probe("double arg < int", "args.ratio < 1", (True,), "cross-type ordering"),
    Probe("bool arg == 1", "args.flag == 1", (False,), "bool is not int"),
    Probe("null value", "args.none == null", (True,)),
    Probe("int overflow", "args.big + 1 > 0", (ERROR,)),
    Probe("uint underflow", "0u - 1u == 0u", (ERROR,)),
    Probe("int / 0", "args.count / 0 == 1", (ERROR,)),
    Probe("double / 0.0", "1.0 / 0.0 > 0.0", (True,), "+inf"),
    Probe("false && error", "false && (1 / 0 == 1)", (False,)),
    Probe("true || error", "true || (1 / 0 == 1)", (True,)),
    Probe("error || true", "(1 / 0 == 1) || true", (True,), "commutative"),
    Probe("error && false", "args.missing == 1 && false", (False,), "commutative"),
    Probe("non-bool result", "args.path", ("/public/readme.md", COMPILE)),
    Probe("int(string) bad", "int(args.mode) == 1", (ERROR,)),
    Probe(
        "timestamp + duration",
        'timestamp("2025-01-01T00:00:00Z") + duration("24h") == timestamp("2025-01-02T00:00:00Z")',
        (True,),
    ),
    Probe("type()", "type(args.count) == int", (True,)),
    Probe("unknown variable", 'arg.path == "x"', (COMPILE,), "at load, not per request"),
    Probe("comprehension var", "args.items.exists(x, x == 2)", (True,), "x is not unknown"),
    Probe("parse error", 'args.path.startsWith("/public/"', (COMPILE,), "column?"),
]


# Typed as plain classes: mypy cannot call a union of these four constructors on a value
# narrowed only to the union of their instances.
_PLAIN_TYPES: tuple[type, ...] = (int, float, str, bytes)


def _plain(value: Any) -> Any:
    """Library result -> plain Python (celpy returns subclasses of int/str/...)."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    for base in _PLAIN_TYPES:
        if isinstance(value, base):
            return base(value)
    return value


# --- adapters ----------------------------------------------------------------------------


class Adapter:
    name = ""
    dist = ""

    def compile(self, source: str) -> Any:
        raise NotImplementedError

    def unknown_variables(self, compiled: Any) -> list[str] | None:
        """Top-level names outside VARIABLES, found statically; None when the lib can't."""
        return None

    def convert(self, inputs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def eval_converted(self, compiled: Any, converted: Any) -> Any:
        raise NotImplementedError

    def evaluate(self, compiled: Any, inputs: dict[str, Any]) -> Any:
        return self.eval_converted(compiled, self.convert(inputs))

    def version(self) -> str:
        return importlib.metadata.version(self.dist)


class CppAdapter(Adapter):
    """cel-expr-python: a type-checked environment; the four variables are map(string, dyn)."""

    name = "cel-expr-python (C++)"
    dist = "cel-expr-python"

    def __init__(self) -> None:
        from cel_expr_python import cel

        self.cel = cel
        dyn_map = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
        self.env = cel.NewEnv(variables=dict.fromkeys(VARIABLES, dyn_map))

    def compile(self, source: str) -> Any:
        try:
            return self.env.compile(source)
        except RuntimeError as exc:
            raise CompileError(str(exc)) from exc

    def unknown_variables(self, compiled: Any) -> list[str] | None:
        return []  # the checker already refused undeclared names in compile()

    def convert(self, inputs: dict[str, Any]) -> Any:
        return self.env.Activation(inputs)

    def eval_converted(self, compiled: Any, converted: Any) -> Any:
        result = compiled.eval(converted)
        if result.type() == self.cel.Type.ERROR:
            raise EvalError(result.value())
        return result.plain_value()


class RustAdapter(Adapter):
    """common-expression-language: no checker; Program.variables() lists identifiers."""

    name = "common-expression-language (Rust)"
    dist = "common-expression-language"

    def __init__(self) -> None:
        import cel

        self.cel = cel

    def compile(self, source: str) -> Any:
        try:
            return self.cel.compile(source)
        except Exception as exc:  # ValueError for parse errors
            raise CompileError(str(exc)) from exc

    def unknown_variables(self, compiled: Any) -> list[str] | None:
        # variables() includes comprehension-bound names (the x in all(x, ...)), so this
        # over-reports; telling them apart needs our own parse of the source.
        return [v for v in compiled.variables() if v not in VARIABLES]

    def convert(self, inputs: dict[str, Any]) -> Any:
        return self.cel.Context(variables=inputs)

    def eval_converted(self, compiled: Any, converted: Any) -> Any:
        try:
            return compiled.execute(converted)
        except Exception as exc:  # KeyError, ValueError, RuntimeError, OverflowError, ...
            raise EvalError(f"{type(exc).__name__}: {exc}") from exc


class PyAdapter(Adapter):
    """cel-python: pure Python; no checker; the lark AST can be walked for identifiers."""

    name = "cel-python (pure Python)"
    dist = "cel-python"

    def __init__(self) -> None:
        import celpy

        self.celpy = celpy
        self.env = celpy.Environment()

    def compile(self, source: str) -> Any:
        try:
            ast = self.env.compile(source)
        except Exception as exc:  # CELParseError
            raise CompileError(str(exc)) from exc
        return ast, self.env.program(ast)

    def unknown_variables(self, compiled: Any) -> list[str] | None:
        # Every ident_arg/ident in the tree; comprehension variables show up too.
        ast, _ = compiled
        names = set()
        for tree in ast.iter_subtrees():
            if tree.data == "ident":
                names.add(str(tree.children[0]))
        return sorted(n for n in names if n not in VARIABLES)

    def convert(self, inputs: dict[str, Any]) -> Any:
        return {k: self.celpy.json_to_cel(v) for k, v in inputs.items()}

    def eval_converted(self, compiled: Any, converted: Any) -> Any:
        _, program = compiled
        try:
            result = program.evaluate(converted)
        except Exception as exc:  # CELEvalError, raised or returned
            raise EvalError(f"{type(exc).__name__}: {exc}") from exc
        if isinstance(result, self.celpy.CELEvalError):
            raise EvalError(str(result))
        return self._unwrap(result)

    def _unwrap(self, value: Any) -> Any:
        # celtypes.BoolType subclasses int (bool can't be subclassed): unwrap before _plain.
        celtypes = self.celpy.celtypes
        if isinstance(value, celtypes.BoolType):
            return bool(value)
        if isinstance(value, dict):
            return {self._unwrap(k): self._unwrap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._unwrap(v) for v in value]
        return value


ADAPTERS: list[type[Adapter]] = [CppAdapter, RustAdapter, PyAdapter]

# --- correctness -------------------------------------------------------------------------


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _same(a: Any, b: Any) -> bool:
    # 1 == True and 1 == 1.0 in Python, not in CEL: compare types too.
    return type(a) is type(b) and a == b


def run_probe(adapter: Adapter, probe: Probe) -> tuple[Any, str]:
    """(outcome, detail): outcome is a plain value, ERROR or COMPILE."""
    try:
        compiled = adapter.compile(probe.source)
    except CompileError as exc:
        return COMPILE, str(exc)
    unknown = adapter.unknown_variables(compiled)
    if probe.what in ("unknown variable", "comprehension var") and unknown:
        return COMPILE, f"static: unknown {unknown}"
    try:
        return _plain(adapter.evaluate(compiled, PROBE_INPUTS)), ""
    except EvalError as exc:
        return ERROR, str(exc)
    except Exception as exc:  # a crash outside the library's error model is a finding
        return ERROR, f"raised {type(exc).__name__}: {exc}"


def correctness(adapters: list[Adapter]) -> None:
    print("\n## Correctness (ok = a CEL-spec outcome; detail = what the library said)\n")
    header = ["probe", "expression", *[a.name.split(" ")[0] for a in adapters]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    scores = dict.fromkeys((a.name for a in adapters), 0)
    details: list[str] = []
    for probe in PROBES:
        cells = []
        for adapter in adapters:
            outcome, detail = run_probe(adapter, probe)
            good = any(_same(outcome, e) for e in probe.expect)
            scores[adapter.name] += good
            shown = outcome if outcome in (ERROR, COMPILE) else repr(outcome)
            cells.append(f"{'ok' if good else 'NO'} {_short(shown, 22)}")
            if detail and (probe.expect[0] in (ERROR, COMPILE) or not good):
                details.append(
                    f"  {adapter.name.split(' ')[0]:<28} {probe.what:<22} {_short(detail, 150)}"
                )
        print(f"| {probe.what} | `{_short(probe.source, 48)}` | " + " | ".join(cells) + " |")
    print()
    for name, score in scores.items():
        print(f"  {name}: {score}/{len(PROBES)} probes as the spec says")
    print("\nError messages (the libraries' own words; note which carry request values):")
    print("\n".join(details))


# --- speed -------------------------------------------------------------------------------


def _median_ns(fn: Callable[[], object], rounds: int) -> float:
    for _ in range(min(rounds, 200)):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples)


def speed(adapters: list[Adapter], rounds: int) -> None:
    print(f"\n## Speed (medians, µs; {rounds} evaluation rounds, {rounds // 10} compiles)\n")
    print("| library | expression | compile | convert | eval (converted) | convert+eval |")
    print("|---|---|---|---|---|---|")
    for adapter in adapters:
        for label, source in BENCH_EXPRESSIONS.items():
            compiled = adapter.compile(source)
            converted = adapter.convert(BENCH_INPUTS)
            assert _plain(adapter.eval_converted(compiled, converted)) is not None

            # Plain functions with their values bound as defaults (a lambda with defaults is
            # the same call, but mypy cannot type one): each timed call costs what it did.
            def compile_source(a: Adapter = adapter, s: str = source) -> Any:
                return a.compile(s)

            def convert_inputs(a: Adapter = adapter) -> Any:
                return a.convert(BENCH_INPUTS)

            def eval_converted(a: Adapter = adapter, c: Any = compiled, v: Any = converted) -> Any:
                return a.eval_converted(c, v)

            def evaluate(a: Adapter = adapter, c: Any = compiled) -> Any:
                return a.evaluate(c, BENCH_INPUTS)

            t_compile = _median_ns(compile_source, max(rounds // 10, 50))
            t_convert = _median_ns(convert_inputs, rounds)
            t_eval = _median_ns(eval_converted, rounds)
            t_total = _median_ns(evaluate, rounds)
            print(
                f"| {adapter.name} | {label} | {t_compile / 1000:.1f} | "
                f"{t_convert / 1000:.1f} | {t_eval / 1000:.1f} | {t_total / 1000:.1f} |"
            )


def import_times() -> None:
    print("\n## Import time (fresh interpreter, ms)\n")
    import subprocess

    for module in ("cel_expr_python.cel", "cel", "celpy"):
        code = (
            f"import time; t = time.perf_counter(); import {module}; "
            "print((time.perf_counter() - t) * 1000)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        shown = f"{float(out.stdout):.0f}" if out.returncode == 0 else "not importable"
        print(f"  {module:<22} {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument("--rounds", type=int, default=20_000)
    ns = parser.parse_args()
    rounds = 2_000 if ns.quick else ns.rounds

    adapters: list[Adapter] = []
    print(f"# CEL libraries, Python {sys.version.split()[0]}\n")
    for cls in ADAPTERS:
        try:
            # The distribution must be there too: another package may own a bare `cel`.
            importlib.metadata.version(cls.dist)
            adapter = cls()
        except (ImportError, importlib.metadata.PackageNotFoundError) as exc:
            print(f"  {cls.name}: not importable ({exc}); skipped")
            continue
        adapters.append(adapter)
        print(f"  {adapter.name}: {adapter.dist} {adapter.version()}")
    if not adapters:
        sys.exit("no CEL library importable; see the docstring for how to install them")
    correctness(adapters)
    speed(adapters, rounds)
    import_times()


if __name__ == "__main__":
    main()
