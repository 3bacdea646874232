"""The bundle's JSON Schema (draft 2020-12), for editors and CI linters.

It is generated from bundle.proto by ``protos/generate.py`` and ships beside the generated
code; ``lint`` remains the authority (the schema cannot express the meaning checks).
"""

from __future__ import annotations

from importlib import resources

_PACKAGE = "policy_service.gen.policy_service.bundle.v1"
_NAME = "bundle.schema.json"


def bundle_schema_text() -> str:
    """The schema as shipped: pretty-printed JSON ending in a newline."""
    return resources.files(_PACKAGE).joinpath(_NAME).read_text(encoding="utf-8")
