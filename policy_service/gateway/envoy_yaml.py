"""Envoy configs as YAML, with the parts both listeners share written once."""

from __future__ import annotations

from typing import Any

import yaml

from policy_service.gateway.bootstrap import render_envoy_config
from policy_service.gateway.layout import Config, EnvoyLayout


def dump_envoy_yaml(layout: EnvoyLayout) -> str:
    return dump_yaml(render_envoy_config(layout))


def dump_yaml(config: Config) -> str:
    """YAML in Envoy's field order. Parts both listeners share (route config, filters, access
    log) are written once with an anchor named after their field (``&route_config``) and
    referred to as ``*route_config``: the file says what is shared instead of repeating it.
    """
    return yaml.dump(config, Dumper=_EnvoyDumper, sort_keys=False, width=100)


class _EnvoyDumper(yaml.SafeDumper):
    """Names anchors after the mapping key their value first appears under."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._field_of: dict[int, str] = {}
        self._anchors_used: set[str] = set()

    def ignore_aliases(self, data: Any) -> bool:
        # Only containers are worth sharing; repeated strings and numbers stay inline.
        return not isinstance(data, dict | list)

    def represent_mapping(self, tag: str, mapping: Any, flow_style: Any = None) -> yaml.MappingNode:
        node = super().represent_mapping(tag, mapping, flow_style)
        for key_node, value_node in node.value:
            self._field_of.setdefault(id(value_node), str(key_node.value))
        return node

    def generate_anchor(self, node: yaml.Node) -> str:
        base = self._field_of.get(id(node), "shared")
        anchor, count = base, 1
        while anchor in self._anchors_used:
            count += 1
            anchor = f"{base}_{count}"
        self._anchors_used.add(anchor)
        return anchor
