"""Tool spec validation: what is refused at save time, and the field each refusal names."""

from __future__ import annotations

from typing import Any

import pytest

from agentruns.engine.tools import ToolSpecError, validate_tool_specs
from agentruns.engine.tools.specs import HttpToolSpec, McpServerSpec, parse_server_spec

HTTP = {"type": "http", "name": "crm", "url": "https://crm.example.com/find"}
STDIO = {"type": "mcp", "name": "time", "transport": "stdio", "command": "uvx"}
REMOTE = {"type": "mcp", "name": "docs", "transport": "http", "url": "https://mcp.example.com"}


def refusal(specs: list[Any], **options: Any) -> ToolSpecError:
    with pytest.raises(ToolSpecError) as caught:
        validate_tool_specs(specs, **options)
    return caught.value


def test_valid_specs_of_every_kind_pass() -> None:
    validate_tool_specs(
        [
            {"type": "builtin", "name": "get_current_time"},
            {"type": "builtin", "name": "fetch_url"},
            {"type": "function", "name": "f", "parameters": {"type": "object"}},
            {"type": "function", "ref": "acme/lookup"},
            {**HTTP, "method": "get", "headers": {"Authorization": "Bearer ${CRM_TOKEN}"}},
            {**STDIO, "args": ["mcp-server-time"], "env": {"TZ": "UTC"}},
            {**REMOTE, "headers": {"X-Key": "${DOCS_KEY}"}, "allowed_tools": ["search"]},
        ],
        secrets_allowed=("CRM_TOKEN", "DOCS_*"),
    )


@pytest.mark.parametrize(
    ("spec", "field", "mentions"),
    [
        ({"type": "builtin", "name": "nope"}, "tools[0].name", "unknown builtin"),
        ({"type": "webhook", "name": "x"}, "tools[0].type", "unsupported"),
        ({**HTTP, "url": "file:///etc/passwd"}, "tools[0].url", "http"),
        ({**HTTP, "url": "https://x.example/${TOKEN}"}, "tools[0].url", "header and env"),
        ({**HTTP, "method": "TRACE"}, "tools[0].method", "POST"),
        ({**HTTP, "timeout_s": 0}, "tools[0].timeout_s", "greater than 0"),
        ({**HTTP, "name": "has space"}, "tools[0].name", "pattern"),
        ({**HTTP, "parameters": {"type": "strang"}}, "tools[0].parameters", "JSON Schema"),
        ({**HTTP, "surprise": 1}, "tools[0].surprise", "Extra inputs"),
        ({**STDIO, "command": None}, "tools[0]", "needs a command"),
        ({**STDIO, "url": "https://x.example"}, "tools[0]", "transport 'http'"),
        ({**REMOTE, "url": None}, "tools[0]", "needs a url"),
        ({**REMOTE, "command": "x"}, "tools[0]", "transport 'stdio'"),
        ({**REMOTE, "transport": "sse"}, "tools[0].transport", "stdio"),
        ({**REMOTE, "prefix": "no spaces"}, "tools[0].prefix", "pattern"),
        ("not an object", "tools[0]", "JSON object"),
    ],
)
def test_bad_specs_name_the_field(spec: Any, field: str, mentions: str) -> None:
    error = refusal([spec])
    assert error.field == field
    assert mentions in error.message


def test_duplicates_server_side_only_stdio_and_secrets() -> None:
    assert refusal([HTTP, HTTP]).field == "tools[1].name"
    function = {"type": "function", "name": "f"}
    assert refusal([function], server_side_only=True, field="tools").field == "tools[0].type"
    assert refusal([STDIO], allow_stdio=False).field == "tools[0].transport"
    validate_tool_specs([REMOTE], allow_stdio=False)
    leaky = {**HTTP, "headers": {"Authorization": "Bearer ${OPENAI_API_KEY}"}}
    error = refusal([leaky], secrets_allowed=("CRM_TOKEN",))
    assert error.field == "tools[0].headers.Authorization" and "OPENAI_API_KEY" in error.message
    env = {**STDIO, "env": {"TOKEN": "${GITHUB_TOKEN}"}}
    assert refusal([env], secrets_allowed=()).field == "tools[0].env.TOKEN"
    validate_tool_specs([leaky, env])  # None: trusted (the operator's config file)


def test_parsed_specs_defaults() -> None:
    http = parse_server_spec(HTTP)
    assert isinstance(http, HttpToolSpec)
    assert (http.method, http.timeout_s, http.is_idempotent) == ("POST", 30.0, False)
    assert parse_server_spec({**HTTP, "method": "get"}).is_idempotent  # type: ignore[union-attr]
    assert not parse_server_spec({**HTTP, "method": "GET", "idempotent": False}).is_idempotent  # type: ignore[union-attr]
    mcp = parse_server_spec(STDIO)
    assert isinstance(mcp, McpServerSpec)
    assert mcp.tool_prefix == "time_" and mcp.idempotent is None
    assert parse_server_spec({**STDIO, "prefix": ""}).tool_prefix == ""  # type: ignore[union-attr]
