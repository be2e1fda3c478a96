"""The adapter for OpenAI-compatible Chat Completions endpoints.

One request per model response, streamed with `stream: true` and read by
our small SSE reader. Works with OpenAI and the many servers that copy its
wire format (vLLM, Ollama, llama.cpp, LM Studio, Groq, OpenRouter, ...), so
the parser tolerates their small differences: usage in every chunk, tool
calls without `index`, a missing `finish_reason`.
"""

from __future__ import annotations

import uuid
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

__all__ = ["DEFAULT_TIMEOUT_S", "OpenAIChatModel"]

# Read timeout between chunks: reasoning models can think for minutes before
# the first token.
DEFAULT_TIMEOUT_S = 300.0
_PASSTHROUGH_SETTINGS = (
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "stop",
    "seed",
)


class OpenAIChatModel:
    """`openai:<model>`: any OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None,
        client: ModelClient,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        api_key_env: str = "OPENAI_API_KEY",
    ) -> None:
        self.model = model
        self.name = f"openai:{model}"
        base = base_url.rstrip("/")
        self._url = f"{base}/chat/completions"
        self._endpoint = f"OpenAI-compatible endpoint {base}"
        self._client = client
        self._timeout_s = timeout_s
        self._timeout = httpx.Timeout(timeout_s)
        self._has_key = bool(api_key)
        self._api_key_env = api_key_env
        self._headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def request_body(
        self, messages: list[Message], tools: list[ToolDefinition], settings: dict[str, Any]
    ) -> dict[str, Any]:
        """The JSON body sent for one streamed completion."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_wire_message(m) for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
        for key in _PASSTHROUGH_SETTINGS:
            if settings.get(key) is not None:
                body[key] = settings[key]
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
                if response.headers.get("content-type", "").startswith("application/json"):
                    # Some servers answer a streamed request with a plain JSON error.
                    try:
                        data = orjson.loads(await response.aread())
                    except orjson.JSONDecodeError:
                        data = None
                    if isinstance(data, dict) and data.get("error"):
                        raise error_from_stream(data["error"], endpoint=self._endpoint)
                    raise incomplete_stream(self._endpoint)
                # Read here rather than by a generator per layer: a call waiting for its
                # model holds this one suspended frame (thousands can wait at once).
                reply = _Reply(self._endpoint)
                events = SSEParser(reply.feed)
                async for line in response.aiter_lines():
                    if (delta := events.feed(line)) is not None:
                        yield delta
                if (delta := events.end()) is not None:
                    yield delta
                for event in reply.end():
                    yield event
        except httpx.TransportError as exc:
            raise error_from_transport(
                exc, endpoint=self._endpoint, timeout_s=self._timeout_s
            ) from exc


class _Reply:
    """What one streamed completion said so far, fed its SSE events one at a time."""

    __slots__ = ("_calls", "_done", "_endpoint", "_finish_reason", "_usage")

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._calls = _ToolCallAssembler()
        self._usage: Usage | None = None
        self._finish_reason: str | None = None
        self._done = False

    def feed(self, sse: SSEEvent) -> TextDelta | None:
        """The text this event adds, if any; tool calls are assembled until the end."""
        # Read on to the end of the body after `[DONE]` (it is right there): a response
        # left unread cannot go back to the pool, and every call would open a connection.
        if self._done:
            return None
        if sse.data == "[DONE]":
            self._done = True
            return None
        try:
            chunk = orjson.loads(sse.data)
        except orjson.JSONDecodeError as exc:
            raise ModelError(
                f"{self._endpoint} sent invalid JSON in its stream: {sse.data[:200]!r}",
                retryable=True,
            ) from exc
        if not isinstance(chunk, dict):
            return None
        if chunk.get("error"):
            raise error_from_stream(chunk["error"], endpoint=self._endpoint)
        raw_usage = chunk.get("usage")
        if raw_usage:
            self._usage = Usage(
                input_tokens=int(raw_usage.get("prompt_tokens") or 0),
                output_tokens=int(raw_usage.get("completion_tokens") or 0),
            )
        text = ""
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            fragments = delta.get("tool_calls")
            if fragments:
                self._calls.add(fragments)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return TextDelta(text) if text else None

    def end(self) -> list[ModelEvent]:
        """The tool calls, usage and finish reason, once the stream has ended."""
        # A server that skips `[DONE]` but said why it finished is complete enough.
        if not self._done and self._finish_reason is None:
            raise incomplete_stream(self._endpoint)
        completed = self._calls.completed()
        finish_reason = self._finish_reason
        if completed and finish_reason in (None, "stop"):
            # Some servers report "stop" even when the turn ends in tool calls.
            finish_reason = "tool_calls"
        tail: list[ModelEvent] = [*completed]
        if self._usage is not None:
            tail.append(self._usage)
        tail.append(Finish(finish_reason or "stop"))
        return tail


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _ToolCallAssembler:
    """Joins tool-call fragments that arrive spread over many chunks."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def add(self, fragments: list[dict[str, Any]]) -> None:
        for fragment in fragments:
            call = self._calls.setdefault(self._index_of(fragment), _PartialCall())
            if fragment.get("id"):
                call.id = fragment["id"]
            function = fragment.get("function") or {}
            if function.get("name"):
                call.name = function["name"]
            if function.get("arguments"):
                call.arguments.append(function["arguments"])

    def _index_of(self, fragment: dict[str, Any]) -> int:
        index = fragment.get("index")
        if isinstance(index, int):
            return index
        # Servers that omit `index` send each call whole, or continue the last one.
        fragment_id = fragment.get("id")
        for known, call in self._calls.items():
            if fragment_id and call.id == fragment_id:
                return known
        if fragment_id or not self._calls:
            return len(self._calls)
        return max(self._calls)

    def completed(self) -> list[ToolCall]:
        return [
            ToolCall(
                id=call.id or f"call_{uuid.uuid4().hex[:24]}",
                name=call.name,
                arguments="".join(call.arguments) or "{}",
            )
            for _, call in sorted(self._calls.items())
        ]


def _wire_message(message: Message) -> dict[str, Any]:
    role = message["role"]
    if role == "assistant":
        wire: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        tool_calls = message.get("tool_calls")
        if tool_calls:
            wire["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call.get("arguments") or "{}"},
                }
                for call in tool_calls
            ]
        elif wire["content"] is None:
            wire["content"] = ""
        return wire
    if role == "tool":
        content = message.get("content")
        if content is None:
            content = ""
        elif not isinstance(content, str):
            content = orjson.dumps(content).decode()
        return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": content}
    return {"role": role, "content": message.get("content") or ""}
