"""Tools: what the model is offered and who executes each call."""

from __future__ import annotations

import re
from typing import Any

from agentruns.engine.models.base import ToolDefinition
from agentruns.engine.tools.arguments import check_schema
from agentruns.engine.tools.base import ServerTool, Toolset
from agentruns.engine.tools.builtin import BUILTIN_TOOLS

__all__ = [
    "ServerTool",
    "Toolset",
    "build_toolset",
    "inline_refs",
    "parse_ref",
    "tool_refs",
    "validate_tool_specs",
]

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def parse_ref(ref: Any) -> tuple[str, str]:
    """`"namespace/name"` of a registered tool, or ValueError."""
    namespace, _, name = str(ref).partition("/")
    if (
        not isinstance(ref, str)
        or not NAMESPACE.fullmatch(namespace)
        or not TOOL_NAME.fullmatch(name)
    ):
        raise ValueError(f"ref must look like 'namespace/tool_name', not {ref!r}")
    return namespace, name


def tool_refs(specs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {parse_ref(spec["ref"]) for spec in specs if spec.get("ref") is not None}


def inline_refs(
    specs: list[dict[str, Any]], found: dict[tuple[str, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Replace each `ref` by the registered definition; KeyError names a missing one."""
    inlined = []
    for spec in specs:
        if spec.get("ref") is None:
            inlined.append(spec)
            continue
        key = parse_ref(spec["ref"])
        if key not in found:
            raise KeyError(spec["ref"])
        tool = found[key]
        inlined.append(
            {
                "type": "function",
                "name": tool["name"],
                "description": tool["description"],
                "parameters": tool["parameters"],
            }
        )
    return inlined


def validate_tool_specs(specs: list[dict[str, Any]]) -> None:
    """Raise ValueError naming the first tool spec this server cannot run."""
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        kind = spec.get("type")
        name = spec.get("name")
        if kind == "function" and spec.get("ref") is not None:
            _namespace, name = parse_ref(spec["ref"])
            extra = set(spec) - {"type", "ref"}
            if extra:
                raise ValueError(f"tools[{index}]: a ref takes no other fields ({sorted(extra)})")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tools[{index}]: a tool needs a name (a non-empty string)")
        if kind == "builtin":
            if name not in BUILTIN_TOOLS:
                known = ", ".join(sorted(BUILTIN_TOOLS))
                raise ValueError(f"tools[{index}]: unknown builtin tool {name!r} (known: {known})")
        elif kind == "function":
            try:
                check_schema(spec.get("parameters") or {"type": "object"})
            except ValueError as exc:
                raise ValueError(f"tools[{index}]: {exc}") from exc
        else:
            raise ValueError(f"tools[{index}]: unsupported tool type {kind!r}")
        if name in seen:
            raise ValueError(f"tools[{index}]: duplicate tool name {name!r}")
        seen.add(name)


def build_toolset(specs: list[dict[str, Any]]) -> Toolset:
    toolset = Toolset()
    for spec in specs:
        if spec["type"] == "builtin":
            tool: ServerTool = BUILTIN_TOOLS[spec["name"]]()
            toolset.server[tool.definition.name] = tool
        elif spec["type"] == "function":
            toolset.client[spec["name"]] = ToolDefinition(
                name=spec["name"],
                description=spec.get("description") or "",
                parameters=spec.get("parameters") or {"type": "object", "properties": {}},
            )
    return toolset
