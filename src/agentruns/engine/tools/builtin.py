"""Built-in server-side tools."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentruns.engine.models.base import ToolDefinition
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

    async def call(self, arguments: dict[str, Any]) -> str:
        name = arguments.get("timezone") or "UTC"
        try:
            zone = ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ToolError(f"unknown time zone {name!r}") from exc
        return datetime.now(zone).isoformat()


BUILTIN_TOOLS: dict[str, type[Any]] = {"get_current_time": GetCurrentTime}
