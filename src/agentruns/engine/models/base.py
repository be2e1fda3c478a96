"""The one small interface every model adapter implements.

Messages use the neutral format stored in `run_messages` (close to OpenAI
Chat Completions):

    {"role": "system", "content": "..."}
    {"role": "user", "content": "..."}
    {"role": "assistant", "content": "text or null",
     "tool_calls": [{"id": "call_1", "name": "get_time", "arguments": "{\"tz\": \"UTC\"}"}]}
    {"role": "tool", "tool_call_id": "call_1", "name": "get_time", "content": "12:00"}

`arguments` is the raw JSON text the model produced (it may be invalid JSON:
the executor validates it, not the adapter).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

Message = dict[str, Any]

MESSAGE_FORMAT_VERSION = 1


def message_text(content: Any) -> str:
    """The text of a message's content (a string, OpenAI-style parts, or anything else as JSON)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return orjson.dumps(content).decode()


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """A tool as the model sees it."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str = "stop"


ModelEvent = TextDelta | ToolCall | Usage | Finish


class Model(Protocol):
    """A streaming chat model. Adapters are cheap to build and hold no per-run state."""

    name: str

    def stream(
        self,
        messages: list[Message],
        tools: list[ToolDefinition],
        settings: dict[str, Any],
    ) -> AsyncIterator[ModelEvent]:
        """Stream one model response.

        Yields `TextDelta`s as text arrives, one `ToolCall` per completed tool
        call, at most one `Usage`, and a final `Finish`. Raises
        `agentruns.errors.ModelError` on provider failures.
        """
        ...
