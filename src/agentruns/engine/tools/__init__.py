"""Tools: what the model is offered and who executes each call."""

from __future__ import annotations

from typing import Any

from agentruns.engine.models.base import ToolDefinition
from agentruns.engine.tools.arguments import check_schema
from agentruns.engine.tools.base import ServerTool, Toolset
from agentruns.engine.tools.builtin import BUILTIN_TOOLS

__all__ = ["ServerTool", "Toolset", "build_toolset", "validate_tool_specs"]


def validate_tool_specs(specs: list[dict[str, Any]]) -> None:
    """Raise ValueError naming the first tool spec this server cannot run."""
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        kind = spec.get("type")
        name = spec.get("name")
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
