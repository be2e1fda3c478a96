"""Tools: what the model is offered and who executes each call.

function  the client executes it (the run pauses)     specs.py, arguments.py
builtin   get_current_time, fetch_url                  builtin.py, fetch.py
http      the worker sends the arguments to a URL      http.py, net.py, secrets.py
mcp       an MCP server's tools (stdio or HTTP)        mcp.py
bundles   named sets of server-side specs; `default`   bundles.py
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agentruns.engine.models.base import ToolDefinition
from agentruns.engine.tools.base import ServerTool, ToolContext, ToolLimits, Toolset
from agentruns.engine.tools.builtin import BUILTIN_TOOLS
from agentruns.engine.tools.http import HttpTool
from agentruns.engine.tools.mcp import McpServerUnavailable, McpTool, server_tools
from agentruns.engine.tools.runtime import ToolPolicy, ToolRuntime
from agentruns.engine.tools.specs import (
    HttpToolSpec,
    McpServerSpec,
    ToolSpecError,
    parse_ref,
    parse_server_spec,
    validate_tool_specs,
)

__all__ = [
    "McpServerUnavailable",
    "ServerTool",
    "ToolContext",
    "ToolLimits",
    "ToolPolicy",
    "ToolRuntime",
    "ToolSource",
    "ToolSpecError",
    "Toolset",
    "build_toolset",
    "inline_refs",
    "parse_ref",
    "tool_refs",
    "validate_tool_specs",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolSource:
    """Tool specs and how far they are trusted: the operator's own (the config file's
    `default` bundle) may run stdio commands and use any secret; API clients' may not."""

    specs: list[dict[str, Any]]
    trusted: bool = False


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


async def _server_tools(
    spec: HttpToolSpec | McpServerSpec, trusted: bool, runtime: ToolRuntime, owner: str
) -> list[ServerTool]:
    secrets_allowed = None if trusted else runtime.policy.secrets_allowed
    if isinstance(spec, HttpToolSpec):
        return [HttpTool(spec, runtime.context, secrets_allowed)]
    if spec.transport == "stdio" and not trusted and not runtime.policy.allow_stdio:
        raise McpServerUnavailable(
            f"MCP server {spec.name!r}: stdio MCP servers are disabled on this server "
            "(AGENTRUNS_MCP_ALLOW_STDIO)"
        )
    connection = await runtime.mcp.connection(
        owner,
        spec,
        secrets_allowed=secrets_allowed,
        allow_private=runtime.limits.allow_private,
    )
    return [
        McpTool(
            runtime.mcp,
            owner,
            spec,
            info,
            secrets_allowed=secrets_allowed,
            allow_private=runtime.limits.allow_private,
        )
        for info in server_tools(connection, spec)
    ]


async def build_toolset(sources: list[ToolSource], runtime: ToolRuntime, owner: str) -> Toolset:
    """The tools of a run. On a name clash the earlier source wins (the agent's own tools
    come before its bundle's). MCP servers are started (or reused) here, so a server that
    cannot start raises McpServerUnavailable before the model is called."""
    toolset = Toolset()
    for source in sources:
        for spec in source.specs:
            kind = spec["type"]
            if kind == "function":
                if not toolset.has(spec["name"]):
                    toolset.client[spec["name"]] = ToolDefinition(
                        name=spec["name"],
                        description=spec.get("description") or "",
                        parameters=spec.get("parameters") or {"type": "object", "properties": {}},
                    )
                continue
            if kind == "builtin":
                tools = [BUILTIN_TOOLS[spec["name"]](runtime.context)]
            else:
                tools = await _server_tools(parse_server_spec(spec), source.trusted, runtime, owner)
            for tool in tools:
                name = tool.definition.name
                if toolset.has(name):
                    log.info("tool %s is offered once: an earlier spec has that name", name)
                    continue
                toolset.server[name] = tool
    return toolset
