"""Server-side tools, and how an agent's tool specs become what the model is offered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from agentruns.engine.models.base import ToolDefinition


class ServerTool(Protocol):
    """A tool the worker executes itself."""

    definition: ToolDefinition
    # Safe to call again when a crash left the outcome of an earlier call unknown.
    idempotent: bool
    # The executor abandons a call after this long and tells the model it timed out.
    timeout_s: float

    async def call(self, arguments: dict[str, Any]) -> str: ...


@dataclass(frozen=True, slots=True)
class ToolLimits:
    """The operator's bounds on what server-side tools may do (see docs/configuration.md)."""

    allow_private: bool = False
    output_max_chars: int = 20_000
    response_max_bytes: int = 1024 * 1024
    fetch_timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What built-in and http tools use: the worker's HTTP client for tools, and the limits."""

    http: httpx.AsyncClient
    limits: ToolLimits


@dataclass
class Toolset:
    """The tools of one run: server tools run here, client tools pause the run."""

    server: dict[str, ServerTool] = field(default_factory=dict)
    client: dict[str, ToolDefinition] = field(default_factory=dict)

    @property
    def definitions(self) -> list[ToolDefinition]:
        return [tool.definition for tool in self.server.values()] + list(self.client.values())

    def is_client_tool(self, name: str) -> bool:
        return name in self.client

    def has(self, name: str) -> bool:
        return name in self.server or name in self.client
