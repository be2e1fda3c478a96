"""Server-side tools, and how an agent's tool specs become what the model is offered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agentruns.engine.models.base import ToolDefinition


class ServerTool(Protocol):
    """A tool the worker executes itself."""

    definition: ToolDefinition

    async def call(self, arguments: dict[str, Any]) -> str: ...


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
