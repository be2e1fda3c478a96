"""`{{var}}` templates: plain substitution, never code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")


class MissingVars(ValueError):
    """Templates name vars that were neither given nor defaulted."""

    def __init__(self, names: list[str]) -> None:
        super().__init__("missing template vars: " + ", ".join(names))
        self.names = names


def placeholders(template: str | None) -> set[str]:
    return set(PLACEHOLDER.findall(template or ""))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def render(template: str, values: Mapping[str, Any]) -> str:
    """Substitute every `{{name}}`; raises MissingVars naming all that are absent."""
    missing = sorted(placeholders(template) - values.keys())
    if missing:
        raise MissingVars(missing)
    return PLACEHOLDER.sub(lambda match: _text(values[match.group(1)]), template)


def render_all(templates: list[str | None], values: Mapping[str, Any]) -> list[str | None]:
    """Render several templates, reporting every missing var at once."""
    missing = sorted(set().union(*(placeholders(t) for t in templates)) - values.keys())
    if missing:
        raise MissingVars(missing)
    return [None if t is None else render(t, values) for t in templates]
