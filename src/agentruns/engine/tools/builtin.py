"""Built-in server-side tools: small, safe, and idempotent by nature."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentruns.engine.models.base import ToolDefinition
from agentruns.engine.tools.base import ServerTool, ToolContext
from agentruns.engine.tools.fetch import FetchUrl
from agentruns.errors import ToolError


class GetCurrentTime:
    definition = ToolDefinition(
        name="get_current_time",
        description="The current date and time, in ISO 8601, in a given IANA time zone.",
        parameters={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone such as Europe/Paris",
                    "default": "UTC",
                }
            },
        },
    )
    idempotent = True
    timeout_s = 5.0

    def __init__(self, context: ToolContext | None = None) -> None:
        del context  # needs nothing from the worker

    async def call(self, arguments: dict[str, Any]) -> str:
        name = arguments.get("timezone") or "UTC"
        try:
            zone = ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ToolError(f"unknown time zone {name!r}") from exc
        return datetime.now(zone).isoformat()


BUILTIN_TOOLS: dict[str, Callable[[ToolContext], ServerTool]] = {
    "get_current_time": GetCurrentTime,
    "fetch_url": FetchUrl,
}
