"""What a worker holds for server-side tools across runs: an HTTP client, MCP sessions, limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from agentruns.config import Settings
from agentruns.engine.tools.base import ToolContext, ToolLimits
from agentruns.engine.tools.builtin import BUILTIN_TOOLS
from agentruns.engine.tools.bundles import default_bundle_specs
from agentruns.engine.tools.mcp import McpSessions
from agentruns.engine.tools.net import tool_http_client
from agentruns.engine.tools.secrets import parse_allowlist


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """What API clients may put in tool specs; the operator's config file is exempt."""

    allow_stdio: bool = False
    secrets_allowed: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolPolicy:
        return cls(
            allow_stdio=settings.mcp_allow_stdio,
            secrets_allowed=parse_allowlist(settings.tool_secrets),
        )


def limits_from_settings(settings: Settings) -> ToolLimits:
    return ToolLimits(
        allow_private=settings.tool_allow_private,
        output_max_chars=settings.tool_output_max_chars,
        response_max_bytes=settings.tool_response_max_bytes,
        fetch_timeout_s=settings.fetch_timeout_s,
    )


@dataclass
class ToolRuntime:
    """One per worker (held by its Executor); `aclose` stops the MCP servers it started."""

    limits: ToolLimits = field(default_factory=ToolLimits)
    policy: ToolPolicy = field(default_factory=ToolPolicy)
    default_bundle: list[dict[str, Any]] = field(
        default_factory=lambda: [{"type": "builtin", "name": name} for name in BUILTIN_TOOLS]
    )
    mcp: McpSessions = field(default_factory=McpSessions)
    http: httpx.AsyncClient = field(default_factory=tool_http_client)

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolRuntime:
        return cls(
            limits=limits_from_settings(settings),
            policy=ToolPolicy.from_settings(settings),
            default_bundle=default_bundle_specs(settings.config),
            mcp=McpSessions(
                start_timeout_s=settings.mcp_start_timeout_s,
                idle_timeout_s=settings.mcp_idle_timeout_s,
            ),
        )

    @property
    def context(self) -> ToolContext:
        return ToolContext(http=self.http, limits=self.limits)

    async def aclose(self) -> None:
        try:
            await self.mcp.aclose()
        finally:
            await self.http.aclose()
