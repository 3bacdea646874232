"""Read a bundle file: YAML -> shape check -> meaning check and compile.

A bundle either loads completely or raises ``BundleError`` listing every problem; there
is no partially loaded bundle. ``lint`` and the server share this one path, so what lint
accepts is exactly what the server will run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor

from policy_service.bundles.compile import compile_bundle
from policy_service.bundles.files import BundleFileError, BundleFiles, read_bundle_path
from policy_service.bundles.private_keys import private_key_problems
from policy_service.bundles.shape import check_shape, shape_valid_part
from policy_service.bundles.yaml_text import parse_yaml
from policy_service.errors import BundleError, BundleProblem
from policy_service.gen.policy_service.bundle.v1 import bundle_pb2
from policy_service.policy.model import CompiledBundle

# The generated module's descriptor is the C implementation; it is the same API.
_BUNDLE_DESCRIPTOR = cast("Descriptor", bundle_pb2.Bundle.DESCRIPTOR)

__all__ = ["load_bundle", "load_bundle_files", "parse_yaml", "read_bundle"]


def load_bundle_files(
    files: BundleFiles, *, environ: Mapping[str, str] | None = None
) -> CompiledBundle:
    """Compile a snapshot. Files the bundle names (JWKS files) are read through it, so after
    this returns ``files`` holds every byte the bundle depends on.

    A bundle holding private key material is refused, before compiling (a directory or an
    archive holds all its files already) and after (the files a single YAML file names are
    read while compiling)."""
    source = files.source
    _refuse_private_keys(files)
    try:
        text = files.entry_text
    except UnicodeDecodeError:
        raise BundleError([BundleProblem(source, "", "is not UTF-8 text")]) from None
    document = parse_yaml(text, source)
    problems = check_shape(document, _BUNDLE_DESCRIPTOR, source)
    if problems:
        raise BundleError([*problems, *_meaning_problems_beside(document, problems, files)])
    message = bundle_pb2.Bundle()
    # The shape check already proved every key and type, so this cannot fail on input;
    # it is the typed view the compiler reads.
    json_format.ParseDict(document, message)
    bundle = compile_bundle(
        message,
        source=source,
        files=files,
        environ=os.environ if environ is None else environ,
    )
    _refuse_private_keys(files)
    return bundle


def _meaning_problems_beside(
    document: Any, shape: list[BundleProblem], files: BundleFiles
) -> list[BundleProblem]:
    """The meaning problems of the parts of a bundle that have the right shape, so an author
    sees every problem in one run. Problems under a path the shape check already reported
    are left out: they would only repeat it."""
    if not isinstance(document, Mapping):
        return []
    message = bundle_pb2.Bundle()
    json_format.ParseDict(shape_valid_part(document, _BUNDLE_DESCRIPTOR), message)
    try:
        compile_bundle(message, source=files.source, files=files, environ={})
    except BundleError as exc:
        return [problem for problem in exc.problems if not _repeats(problem, shape)]
    return []


_SUGGESTED = re.compile(r"did you mean '([^']+)'")


def _repeats(problem: BundleProblem, shape: list[BundleProblem]) -> bool:
    """Whether a meaning problem only says again what a shape problem said: it is under
    the wrong key's path, or on the object holding it (a rule left with no targets once its
    empty `tools:` is taken out), or on the key a misspelling was meant to be."""
    for wrong in shape:
        if not wrong.path:
            continue
        if _under(problem.path, wrong.path) or _under(wrong.path, problem.path):
            return True
        suggested = _SUGGESTED.search(wrong.message)
        if suggested is not None:
            parent = wrong.path.rpartition(".")[0]
            meant = f"{parent}.{suggested[1]}" if parent else suggested[1]
            if _under(problem.path, meant):
                return True
    return False


def _under(path: str, parent: str) -> bool:
    if not parent:
        return False
    return path == parent or path.startswith((f"{parent}.", f"{parent}["))


def _refuse_private_keys(files: BundleFiles) -> None:
    problems = private_key_problems(files)
    if problems:
        raise BundleError(problems)


def read_bundle(path: str | Path) -> BundleFiles:
    """Snapshot the bundle at ``path`` (a file or a directory), as a ``BundleError``."""
    try:
        return read_bundle_path(Path(path))
    except BundleFileError as exc:
        raise BundleError([BundleProblem(str(path), "", exc.message)]) from None


def load_bundle(path: str | Path, *, environ: Mapping[str, str] | None = None) -> CompiledBundle:
    return load_bundle_files(read_bundle(path), environ=environ)
