"""The adapter for Anthropic's Messages API (`/v1/messages`, streamed).

The neutral format is OpenAI-shaped, so this module does the translation:
system messages become the top-level `system`, assistant tool calls become
`tool_use` blocks, and tool messages become `tool_result` blocks inside
user turns (consecutive ones merged, as the API wants all results of one
turn in one message).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from agentruns.engine.models.base import (
    Finish,
    Message,
    ModelEvent,
    TextDelta,
    ToolCall,
    ToolDefinition,
    Usage,
    message_text,
)
from agentruns.engine.models.provider_errors import (
    error_from_response,
    error_from_stream,
    error_from_transport,
    incomplete_stream,
)
from agentruns.engine.models.sse import SSEEvent, SSEParser
from agentruns.engine.models.transport import ModelClient
from agentruns.errors import ModelError

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_BASE_URL", "DEFAULT_MAX_TOKENS", "AnthropicModel"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
# The API requires max_tokens; this is enough for an agent turn and leaves
# room under every current model's output limit.
DEFAULT_MAX_TOKENS = 4096
DEFAULT_TIMEOUT_S = 300.0
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_INPUT_USAGE_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class AnthropicModel:
    """`anthropic:<model>`: the Anthropic Messages API."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None,
        client: ModelClient,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        api_key_env: str = "ANTHROPIC_API_KEY",
    ) -> None:
        self.model = model
        self.name = f"anthropic:{model}"
        base = base_url.rstrip("/")
        # Accept base URLs with or without the version segment.
        self._url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        self._endpoint = f"Anthropic API at {base}"
        self._client = client
        self._timeout_s = timeout_s
        self._timeout = httpx.Timeout(timeout_s)
        self._has_key = bool(api_key)
        self._api_key_env = api_key_env
        self._headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if api_key:
            self._headers["x-api-key"] = api_key

    def request_body(
        self, messages: list[Message], tools: list[ToolDefinition], settings: dict[str, Any]
    ) -> dict[str, Any]:
        """The JSON body sent for one streamed message."""
        system, wire_messages = _wire_messages(messages)
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": int(settings.get("max_tokens") or DEFAULT_MAX_TOKENS),
            "messages": wire_messages,
            "stream": True,
        }
        if system:
            body["system"] = system
        if tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in tools
            ]
        for key in ("temperature", "top_p", "top_k"):
            if settings.get(key) is not None:
                body[key] = settings[key]
        stop = settings.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        return body

    async def stream(
        self, messages: list[Message], tools: list[ToolDefinition], settings: dict[str, Any]
    ) -> AsyncIterator[ModelEvent]:
        # Dropped once sent: otherwise the body would live as long as the response streams.
        content = orjson.dumps(self.request_body(messages, tools, settings))
        try:
            async with self._client.stream(
                "POST", self._url, content=content, headers=self._headers, timeout=self._timeout
            ) as response:
                del content
                if response.status_code >= 400:
                    raise error_from_response(
                        response,
                        await response.aread(),
                        endpoint=self._endpoint,
                        model=self.model,
                        key_env=self._api_key_env,
                        has_key=self._has_key,
                    )
                # Read here rather than by a generator per layer: a call waiting for its
                # model holds this one suspended frame (thousands can wait at once).
                reply = _Reply(self._endpoint)
                events: SSEParser[ModelEvent] = SSEParser(reply.feed)
                async for line in response.aiter_lines():
                    if (found := events.feed(line)) is not None:
                        yield found
                if (found := events.end()) is not None:
                    yield found
                for event in reply.end():
                    yield event
        except httpx.TransportError as exc:
            raise error_from_transport(
                exc, endpoint=self._endpoint, timeout_s=self._timeout_s
            ) from exc


class _Reply:
    """What one streamed message said so far, fed its SSE events one at a time."""

    __slots__ = (
        "_endpoint",
        "_finished",
        "_input_tokens",
        "_output_tokens",
        "_stop_reason",
        "_tool_uses",
    )

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._tool_uses: dict[int, _PartialToolUse] = {}
        self._input_tokens = self._output_tokens = 0
        self._stop_reason: str | None = None
        self._finished = False

    def feed(self, sse: SSEEvent) -> ModelEvent | None:
        """The text or the whole tool call this event completes, if any."""
        if self._finished:
            return None  # read to the end so the connection can be reused
        try:
            data = orjson.loads(sse.data)
        except orjson.JSONDecodeError as exc:
            raise ModelError(
                f"{self._endpoint} sent invalid JSON in its stream: {sse.data[:200]!r}",
                retryable=True,
            ) from exc
        if not isinstance(data, dict):
            return None
        kind = data.get("type") or sse.event
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                if delta.get("text"):
                    return TextDelta(delta["text"])
            elif delta.get("type") == "input_json_delta":
                partial = self._tool_uses.get(data.get("index", 0))
                if partial is not None:
                    partial.arguments.append(delta.get("partial_json") or "")
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                self._tool_uses[data.get("index", 0)] = _PartialToolUse(block["id"], block["name"])
            elif block.get("type") == "text" and block.get("text"):
                return TextDelta(block["text"])
        elif kind == "content_block_stop":
            partial = self._tool_uses.pop(data.get("index", 0), None)
            if partial is not None:
                return partial.complete()
        elif kind == "message_start":
            usage = (data.get("message") or {}).get("usage") or {}
            self._input_tokens = _input_tokens(usage)
            self._output_tokens = int(usage.get("output_tokens") or 0)
        elif kind == "message_delta":
            self._stop_reason = (data.get("delta") or {}).get("stop_reason") or self._stop_reason
            usage = data.get("usage") or {}
            # message_delta usage is cumulative; newer API versions repeat input counts.
            if any(usage.get(key) is not None for key in _INPUT_USAGE_KEYS):
                self._input_tokens = max(self._input_tokens, _input_tokens(usage))
            if usage.get("output_tokens") is not None:
                self._output_tokens = int(usage["output_tokens"])
        elif kind == "message_stop":
            self._finished = True
        elif kind == "error":
            raise error_from_stream(data.get("error"), endpoint=self._endpoint)
        return None

    def end(self) -> list[ModelEvent]:
        """The usage and the stop reason, once the stream has ended."""
        if not self._finished:
            raise incomplete_stream(self._endpoint)
        stop_reason = self._stop_reason or "end_turn"
        return [
            Usage(input_tokens=self._input_tokens, output_tokens=self._output_tokens),
            Finish(_STOP_REASONS.get(stop_reason, stop_reason)),
        ]


@dataclass(slots=True)
class _PartialToolUse:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    def complete(self) -> ToolCall:
        return ToolCall(id=self.id, name=self.name, arguments="".join(self.arguments) or "{}")


def _input_tokens(usage: dict[str, Any]) -> int:
    # Cached prompt tokens are reported apart; the run's input is their sum.
    return sum(int(usage.get(key) or 0) for key in _INPUT_USAGE_KEYS)


def _wire_messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """Split out the system prompt and translate the rest into Anthropic turns."""
    system: list[str] = []
    wire: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "system":
            text = message_text(message.get("content"))
            if text:
                system.append(text)
        elif role == "user":
            _append_turn(wire, "user", _text_blocks(message.get("content")))
        elif role == "assistant":
            blocks = _text_blocks(message.get("content"))
            for call in message.get("tool_calls") or ():
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["name"],
                        "input": _parse_arguments(call.get("arguments")),
                    }
                )
            _append_turn(wire, "assistant", blocks)
        elif role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "content": message_text(message.get("content")),
            }
            if message.get("is_error"):
                result["is_error"] = True
            _append_turn(wire, "user", [result])
    return "\n\n".join(system), wire


def _append_turn(wire: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    # Anthropic wants alternating turns; merging also puts all tool results of
    # one assistant turn into the single user message that must follow it.
    if not blocks:
        return
    if wire and wire[-1]["role"] == role:
        wire[-1]["content"].extend(blocks)
    else:
        wire.append({"role": role, "content": blocks})


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    text = message_text(content)
    # The API rejects empty text blocks.
    return [{"type": "text", "text": text}] if text else []


def _parse_arguments(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}
