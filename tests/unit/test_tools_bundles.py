"""The default bundle from the config file, and how bundle tools join an agent's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentruns.engine.tools import ToolRuntime, ToolSource, build_toolset
from agentruns.engine.tools.bundles import default_bundle_specs, render_default_bundle
from agentruns.errors import ConfigurationError

BUILTINS = [
    {"type": "builtin", "name": "get_current_time"},
    {"type": "builtin", "name": "fetch_url"},
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentruns.yaml"
    path.write_text(text)
    return path


def test_default_bundle_is_builtins_plus_configured_mcp_servers(tmp_path: Path) -> None:
    assert default_bundle_specs(None) == BUILTINS
    path = write(
        tmp_path,
        "mcp_servers:\n"
        "  - name: time\n    transport: stdio\n    command: uvx\n    args: [mcp-server-time]\n"
        "    env: {TOKEN: literal-token}\n",
    )
    specs = default_bundle_specs(path)
    assert specs[:2] == BUILTINS
    assert specs[2] == {
        "type": "mcp",
        "name": "time",
        "transport": "stdio",
        "command": "uvx",
        "args": ["mcp-server-time"],
        "env": {"TOKEN": "literal-token"},
    }
    shown = render_default_bundle(specs)
    assert shown["name"] == "default" and shown["builtin"] is True
    assert shown["tools"][2]["env"] == {"TOKEN": "[hidden]"}


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("mcp_server: []\n", "unknown keys"),
        ("- a\n", "mapping"),
        ("mcp_servers:\n  - name: x\n    transport: stdio\n", "mcp_servers[0]"),
        ("mcp_servers: [\n", "not valid YAML"),
    ],
)
def test_bad_config_files_stop_the_server(tmp_path: Path, text: str, mentions: str) -> None:
    with pytest.raises(ConfigurationError, match=mentions.replace("[", r"\[")):
        default_bundle_specs(write(tmp_path, text))
    with pytest.raises(ConfigurationError, match="cannot read"):
        default_bundle_specs(tmp_path / "missing.yaml")


async def test_agent_tools_come_first_and_win_name_clashes() -> None:
    runtime = ToolRuntime()
    try:
        own = [
            {"type": "function", "name": "fetch_url", "parameters": {"type": "object"}},
            {"type": "builtin", "name": "get_current_time"},
        ]
        bundle = [
            {"type": "builtin", "name": "get_current_time"},
            {"type": "http", "name": "crm", "url": "https://crm.example.com"},
            {"type": "builtin", "name": "fetch_url"},
        ]
        toolset = await build_toolset(
            [ToolSource(own), ToolSource(bundle)], runtime, owner="project"
        )
        assert list(toolset.server) == ["get_current_time", "crm"]
        assert list(toolset.client) == ["fetch_url"]  # the agent's client tool, not the builtin
        assert [d.name for d in toolset.definitions] == ["get_current_time", "crm", "fetch_url"]
    finally:
        await runtime.aclose()
