"""Bundles: named sets of server-side tool specs, and the `default` one the operator defines.

`default` is the built-in tools plus the MCP servers listed in the server's
config file (`AGENTRUNS_CONFIG`, e.g. `agentruns.yaml`):

    mcp_servers:
      - name: time
        transport: stdio
        command: uvx
        args: [mcp-server-time]

The operator's specs are trusted: they may run stdio commands and use any
environment variable as a secret, which API clients may not by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentruns.engine.tools.builtin import BUILTIN_TOOLS
from agentruns.engine.tools.specs import ToolSpecError, validate_tool_specs
from agentruns.errors import ConfigurationError

DEFAULT_BUNDLE = "default"
DEFAULT_BUNDLE_DESCRIPTION = (
    "The built-in tools and the MCP servers listed in the server's config file."
)
CONFIG_KEYS = frozenset({"mcp_servers"})
HIDDEN = "[hidden]"


def load_config_file(path: Path | None) -> dict[str, Any]:
    """The parsed config file, or {} without one; ConfigurationError says what is wrong."""
    if path is None:
        return {}
    import yaml  # here: a server without a config file never needs it

    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read the config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"the config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"the config file {path} must be a mapping at the top level")
    unknown = sorted(set(loaded) - CONFIG_KEYS)
    if unknown:
        raise ConfigurationError(
            f"the config file {path} has unknown keys {unknown} (known: {sorted(CONFIG_KEYS)})"
        )
    return loaded


def default_bundle_specs(path: Path | None) -> list[dict[str, Any]]:
    """The tool specs of the `default` bundle: built-ins, then the configured MCP servers."""
    servers = load_config_file(path).get("mcp_servers") or []
    if not isinstance(servers, list):
        raise ConfigurationError(f"{path}: mcp_servers must be a list")
    specs: list[dict[str, Any]] = [{"type": "builtin", "name": name} for name in BUILTIN_TOOLS]
    for server in servers:
        specs.append({"type": "mcp", **server} if isinstance(server, dict) else server)
    try:
        validate_tool_specs(specs[len(BUILTIN_TOOLS) :], field="mcp_servers")
        validate_tool_specs(specs)
    except ToolSpecError as exc:
        raise ConfigurationError(f"{path}: {exc}") from exc
    return specs


def render_default_bundle(specs: list[dict[str, Any]]) -> dict[str, Any]:
    """The `default` bundle as the API shows it: env and header values of the operator's
    servers are hidden (a config file may hold literal tokens)."""
    shown = []
    for spec in specs:
        spec = dict(spec)
        for key in ("env", "headers"):
            if isinstance(spec.get(key), dict):
                spec[key] = {name: HIDDEN for name in spec[key]}
        shown.append(spec)
    return {
        "name": DEFAULT_BUNDLE,
        "description": DEFAULT_BUNDLE_DESCRIPTION,
        "tools": shown,
        "builtin": True,
        "created_at": None,
        "updated_at": None,
    }
