"""YAML text to a document, refusing what PyYAML would quietly accept (duplicate keys).

Bundles, pins files and policy test cases are all read through here.
"""

from __future__ import annotations

from typing import Any

import yaml

from policy_service.errors import BundleError, BundleProblem


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys.

    PyYAML keeps the last of two equal keys silently; in a policy that would let a second
    `rules:` quietly replace the first, so it is an error here.
    """

    duplicate_problems: list[tuple[int, str]]


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str) and key in seen:
            loader.duplicate_problems.append((key_node.start_mark.line + 1, key))
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> Any:
    loader = _StrictLoader(text)
    loader.duplicate_problems = []
    try:
        document = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise BundleError([BundleProblem(source, where, f"not valid YAML: {problem}")]) from exc
    finally:
        loader.dispose()
    if loader.duplicate_problems:
        raise BundleError(
            [
                BundleProblem(source, f"line {line}", f"duplicate key '{key}'")
                for line, key in loader.duplicate_problems
            ]
        )
    return document
