"""MCP helpers without a server: naming, filtering, result text, error descriptions."""

from __future__ import annotations

from typing import Any

import mcp_types
from mcp.shared.exceptions import MCPError

from agentruns.engine.tools.mcp import (
    McpConnection,
    describe_error,
    exposed_tool_name,
    result_text,
    server_tools,
)
from agentruns.engine.tools.secrets import ResolvedSecrets
from agentruns.engine.tools.specs import McpServerSpec


def spec(**fields: Any) -> McpServerSpec:
    return McpServerSpec.model_validate(
        {"type": "mcp", "name": "files", "transport": "stdio", "command": "x", **fields}
    )


def listed(*tools: mcp_types.Tool) -> McpConnection:
    connection = McpConnection("'files'", spec(), {}, {}, ResolvedSecrets(None, {}))
    connection.tools = list(tools)
    return connection


def tool(name: str, schema: Any = None, **hints: bool) -> mcp_types.Tool:
    annotations = mcp_types.ToolAnnotations(**hints) if hints else None
    return mcp_types.Tool(
        name=name,
        description=f"{name} things",
        input_schema=schema or {"type": "object", "properties": {}},
        annotations=annotations,
    )


def test_names_are_prefixed_and_made_safe() -> None:
    assert exposed_tool_name("files_", "read") == "files_read"
    assert exposed_tool_name("", "read.file/v2") == "read_file_v2"
    assert len(exposed_tool_name("p_", "x" * 100)) == 64


def test_server_tools_filter_prefix_and_idempotency() -> None:
    connection = listed(
        tool("read", read_only_hint=True),
        tool("write"),
        tool("stat", idempotent_hint=True),
        tool("broken", {"type": "strang"}),
    )
    infos = server_tools(connection, spec())
    assert [(i.exposed_name, i.name, i.idempotent) for i in infos] == [
        ("files_read", "read", True),
        ("files_write", "write", False),
        ("files_stat", "stat", True),
    ]
    assert infos[0].definition.description == "read things"
    only = server_tools(connection, spec(allowed_tools=["write", "missing"], prefix="fs-"))
    assert [i.exposed_name for i in only] == ["fs-write"]
    forced = server_tools(connection, spec(idempotent=False))
    assert not any(i.idempotent for i in forced)


def test_result_text_keeps_text_and_names_the_rest() -> None:
    result = mcp_types.CallToolResult(
        content=[
            mcp_types.TextContent(type="text", text="hello"),
            mcp_types.ImageContent(type="image", data="aGk=", mime_type="image/png"),
            mcp_types.EmbeddedResource(
                type="resource",
                resource=mcp_types.TextResourceContents(uri="file:///a.txt", text="inside"),
            ),
        ]
    )
    assert result_text(result) == "hello\n[image content omitted]\ninside"
    structured = mcp_types.CallToolResult(content=[], structured_content={"n": 1})
    assert result_text(structured) == '{"n":1}'


def test_describe_error_unwraps_groups() -> None:
    nested = ExceptionGroup("tg", [ExceptionGroup("inner", [FileNotFoundError("nope")])])
    assert describe_error(nested) == "FileNotFoundError: nope"
    assert describe_error(MCPError(-32000, "Connection closed")) == "Connection closed"
    assert describe_error(TimeoutError()) == "timed out"
