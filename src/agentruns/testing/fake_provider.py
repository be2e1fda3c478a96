"""What both fake provider servers share: recorded requests, scripted replies, pacing.

Each fake turns its wire-format request into a `Conversation`, asks
`FakeProviderState.next_reply` what to answer, and renders the `Reply` in
its own wire format as a list of frames that `paced_frames` streams.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentruns.engine.models.offline import example_arguments

MODES = ("echo", "tools", "bench")
BENCH_ANSWER = " ".join(f"word{i}" for i in range(1, 21))


@dataclass(slots=True)
class FakeConfig:
    """The default behaviour when no scripted reply is queued."""

    mode: str = "echo"
    token_delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    # For a conversation with tool outputs since the user's message (None: as above): a
    # benchmark can hold runs in their second model call, where they hold the most.
    first_token_delay_after_tool_s: float | None = None
    # Benchmarks send thousands of requests: they switch recording off.
    record_requests: bool = True


class InFlight:
    """How many model calls are open at once, averaged over time since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.now = 0
        self.peak = 0
        self.total = 0
        self._area = 0.0
        self._since = self._changed = time.monotonic()

    def _advance(self) -> None:
        current = time.monotonic()
        self._area += self.now * (current - self._changed)
        self._changed = current

    def started(self) -> None:
        self._advance()
        self.now += 1
        self.total += 1
        self.peak = max(self.peak, self.now)

    def finished(self) -> None:
        self._advance()
        self.now -= 1

    def stats(self) -> dict[str, float]:
        self._advance()
        elapsed = max(self._changed - self._since, 1e-9)
        return {
            "requests": self.total,
            "in_flight": self.now,
            "peak_in_flight": self.peak,
            "average_in_flight": self._area / elapsed,
            "window_s": elapsed,
        }


@dataclass(frozen=True, slots=True)
class Conversation:
    """The parts of a request the default behaviours look at, whatever the wire format."""

    last_user_text: str
    tools: list[tuple[str, dict[str, Any]]]
    called_since_user: set[str]
    tool_outputs_since_user: list[str]
    input_words: int


@dataclass(frozen=True, slots=True)
class FakeToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Reply:
    text: str = ""
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    error: dict[str, Any] | None = None
    stream_error: dict[str, Any] | None = None
    delay_s: float = 0.0
    token_delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    cut_stream: bool = False
    # Stall for `pause_s` after the first `pause_after_tokens` tokens (a model thinking).
    pause_after_tokens: int = 0
    pause_s: float = 0.0


class FakeProviderState:
    """Mutable state of one fake server. Safe to touch from a test thread:
    the deque and list operations used are atomic under the GIL."""

    def __init__(self, *, require_key: str | bool | None = None, id_prefix: str = "call_"):
        self.requests: list[Any] = []
        self.config = FakeConfig()
        self.in_flight = InFlight()
        self.require_key = require_key
        self._script: deque[dict[str, Any]] = deque()
        self._id_prefix = id_prefix
        self._ids = itertools.count(1)

    def reset(self) -> None:
        self.requests.clear()
        self._script.clear()
        self.config = FakeConfig()

    def configure(
        self,
        *,
        mode: str | None = None,
        token_delay_s: float | None = None,
        first_token_delay_s: float | None = None,
        first_token_delay_after_tool_s: float | None = None,
        record_requests: bool | None = None,
    ) -> None:
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
            self.config.mode = mode
        if token_delay_s is not None:
            self.config.token_delay_s = float(token_delay_s)
        if first_token_delay_s is not None:
            self.config.first_token_delay_s = float(first_token_delay_s)
        if first_token_delay_after_tool_s is not None:
            # A negative value switches it off (the control route's JSON has no None to give).
            after_tool = float(first_token_delay_after_tool_s)
            self.config.first_token_delay_after_tool_s = after_tool if after_tool >= 0 else None
        if record_requests is not None:
            self.config.record_requests = bool(record_requests)

    def record(self, body: Any) -> None:
        if self.config.record_requests:
            self.requests.append(body)

    def script(self, responses: list[dict[str, Any]]) -> None:
        """Queue replies, consumed one per model request before the default mode applies."""
        self._script.extend(responses)

    def key_accepted(self, presented: str | None) -> bool:
        if not self.require_key:
            return True
        if self.require_key is True:
            return bool(presented)
        return presented == self.require_key

    def next_reply(self, conversation: Conversation) -> Reply:
        try:
            scripted = self._script.popleft()
        except IndexError:
            return self._default_reply(conversation)
        return self._scripted_reply(scripted, conversation)

    def _default_reply(self, conversation: Conversation) -> Reply:
        first_token_delay_s = self.config.first_token_delay_s
        after_tool = self.config.first_token_delay_after_tool_s
        if after_tool is not None and conversation.tool_outputs_since_user:
            first_token_delay_s = after_tool
        reply = Reply(
            token_delay_s=self.config.token_delay_s,
            first_token_delay_s=first_token_delay_s,
            input_tokens=conversation.input_words,
        )
        if self.config.mode == "echo":
            reply.text = f"echo: {conversation.last_user_text}"
        elif conversation.tools and not conversation.called_since_user.intersection(
            name for name, _ in conversation.tools
        ):
            name, schema = conversation.tools[0]
            arguments = orjson.dumps(example_arguments(schema)).decode()
            reply.tool_calls = [FakeToolCall(self._new_id(), name, arguments)]
        elif self.config.mode == "bench":
            reply.text = BENCH_ANSWER
        elif conversation.tool_outputs_since_user:
            reply.text = "done: " + "; ".join(conversation.tool_outputs_since_user)
        else:
            reply.text = "done"
        reply.output_tokens = _output_words(reply)
        return reply

    def _scripted_reply(self, scripted: dict[str, Any], conversation: Conversation) -> Reply:
        calls = []
        for call in scripted.get("tool_calls") or ():
            arguments = call.get("arguments", {})
            if not isinstance(arguments, str):
                arguments = orjson.dumps(arguments).decode()
            calls.append(FakeToolCall(call.get("id") or self._new_id(), call["name"], arguments))
        reply = Reply(
            text=scripted.get("text") or "",
            tool_calls=calls,
            error=scripted.get("error"),
            stream_error=scripted.get("stream_error"),
            delay_s=float(scripted.get("delay_s") or 0),
            token_delay_s=float(scripted.get("token_delay_s", self.config.token_delay_s)),
            first_token_delay_s=float(
                scripted.get("first_token_delay_s", self.config.first_token_delay_s)
            ),
            cut_stream=bool(scripted.get("cut_stream")),
            pause_after_tokens=int(scripted.get("pause_after_tokens") or 0),
            pause_s=float(scripted.get("pause_s") or 0),
        )
        usage = scripted.get("usage") or {}
        reply.input_tokens = int(usage.get("input_tokens", conversation.input_words))
        reply.output_tokens = int(usage.get("output_tokens", _output_words(reply)))
        return reply

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"


def require_key_from_env(require_key: str | bool | None, variable: str) -> str | bool | None:
    """An explicit `require_key` wins; else the key in `variable`, if set."""
    if require_key is not None:
        return require_key
    return os.environ.get(variable) or None


def argument_fragments(arguments: str, pieces: int = 3) -> list[str]:
    """Split JSON text the way providers do: into several arbitrary fragments."""
    size = max(1, -(-len(arguments) // pieces))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def count_words(text: str) -> int:
    return len(text.split())


async def paced_frames(
    frames: list[tuple[bytes, bool]], reply: Reply, in_flight: InFlight | None = None
) -> AsyncIterator[bytes]:
    """Stream frames, sleeping before each token frame; stop half-way for `cut_stream`."""
    if reply.cut_stream:
        frames = frames[: max(1, len(frames) // 2)]
    tokens = 0
    try:
        for payload, is_token in frames:
            if is_token:
                delay = reply.first_token_delay_s if tokens == 0 else reply.token_delay_s
                if tokens and tokens == reply.pause_after_tokens:
                    delay += reply.pause_s
                tokens += 1
                if delay > 0:
                    await asyncio.sleep(delay)
            yield payload
    finally:
        if in_flight is not None:
            in_flight.finished()


def json_response(
    data: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(data), status_code=status_code, headers=headers, media_type="application/json"
    )


def control_routes(state: FakeProviderState) -> list[Route]:
    """`/_control/*`: inspect and steer a fake server over HTTP (used by benchmarks)."""

    async def requests(_: Request) -> Response:
        return json_response(state.requests)

    async def reset(_: Request) -> Response:
        state.reset()
        return json_response({"ok": True})

    async def config(request: Request) -> Response:
        data = orjson.loads(await request.body() or b"{}")
        try:
            state.configure(
                mode=data.get("mode"),
                token_delay_s=data.get("token_delay_s"),
                first_token_delay_s=data.get("first_token_delay_s"),
                first_token_delay_after_tool_s=data.get("first_token_delay_after_tool_s"),
                record_requests=data.get("record_requests"),
            )
        except ValueError as exc:
            return json_response({"error": str(exc)}, status_code=400)
        return json_response(
            {
                "mode": state.config.mode,
                "token_delay_s": state.config.token_delay_s,
                "first_token_delay_s": state.config.first_token_delay_s,
            }
        )

    async def script(request: Request) -> Response:
        data = orjson.loads(await request.body() or b"{}")
        responses = data.get("responses")
        if not isinstance(responses, list):
            return json_response({"error": 'expected {"responses": [...]}'}, status_code=400)
        state.script(responses)
        return json_response({"queued": len(responses)})

    async def stats(request: Request) -> Response:
        if request.method == "POST":
            state.in_flight.reset()
        return json_response(state.in_flight.stats())

    return [
        Route("/_control/stats", stats, methods=["GET", "POST"]),
        Route("/_control/requests", requests, methods=["GET"]),
        Route("/_control/reset", reset, methods=["POST"]),
        Route("/_control/config", config, methods=["POST"]),
        Route("/_control/script", script, methods=["POST"]),
    ]


def _output_words(reply: Reply) -> int:
    words = count_words(reply.text)
    words += sum(max(1, count_words(call.arguments)) for call in reply.tool_calls)
    return words
