"""A fake Anthropic Messages API server for tests and benchmarks.

    python -m agentruns.testing.fake_anthropic --port 8901

Serves `POST /v1/messages` (streaming only) plus the `/_control/*` routes
of `fake_provider`. Set `AGENTRUNS_FAKE_ANTHROPIC_KEY` (or pass
`require_key`) to make it demand that `x-api-key`.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agentruns.engine.models.offline import split_words
from agentruns.testing.fake_provider import (
    Conversation,
    FakeProviderState,
    Reply,
    argument_fragments,
    control_routes,
    count_words,
    json_response,
    paced_frames,
    require_key_from_env,
)

__all__ = ["KEY_ENV", "create_app", "main"]

KEY_ENV = "AGENTRUNS_FAKE_ANTHROPIC_KEY"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_message_ids = itertools.count(1)


def create_app(*, require_key: str | bool | None = None) -> Starlette:
    """The fake server; `app.state.fake` is its `FakeProviderState`."""
    state = FakeProviderState(
        require_key=require_key_from_env(require_key, KEY_ENV), id_prefix="toolu_"
    )

    async def messages(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "The request body is not valid JSON.")
        state.record(body)
        if not state.key_accepted(request.headers.get("x-api-key")):
            return _error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "anthropic-version: header is required")
        problem = _request_problem(body)
        if problem:
            return _error(400, problem)
        reply = state.next_reply(_conversation(body))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.error:
            return _scripted_error(reply.error)
        frames = _frames(reply, model=str(body["model"]))
        state.in_flight.started()
        return StreamingResponse(
            paced_frames(frames, reply, state.in_flight), media_type="text/event-stream"
        )

    app = Starlette(
        routes=[Route("/v1/messages", messages, methods=["POST"]), *control_routes(state)]
    )
    app.state.fake = state
    app.state.base_path = ""
    return app


def _frames(reply: Reply, *, model: str) -> list[tuple[bytes, bool]]:
    """SSE frames for a reply; the bool marks frames paced like tokens."""
    message: dict[str, Any] = {
        "id": f"msg_fake{next(_message_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1},
    }
    frames = [(_event("message_start", {"message": message}), False)]
    index = 0
    if reply.text:
        frames.append(_block_start(index, {"type": "text", "text": ""}))
        frames.append((_event("ping", {}), False))
        for word in split_words(reply.text):
            delta = {"type": "text_delta", "text": word}
            frames.append((_event("content_block_delta", {"index": index, "delta": delta}), True))
        frames.append(_block_stop(index))
        index += 1
    for call in reply.tool_calls:
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        frames.append(_block_start(index, block))
        for fragment in argument_fragments(call.arguments):
            delta = {"type": "input_json_delta", "partial_json": fragment}
            frames.append((_event("content_block_delta", {"index": index, "delta": delta}), True))
        frames.append(_block_stop(index))
        index += 1
    if reply.stream_error:
        error = {"type": "overloaded_error", "message": "Overloaded", **reply.stream_error}
        frames.append((_event("error", {"error": error}), False))
        return frames
    stop_reason = "tool_use" if reply.tool_calls else "end_turn"
    finish = {
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": reply.output_tokens},
    }
    frames.append((_event("message_delta", finish), False))
    frames.append((_event("message_stop", {}), False))
    return frames


def _block_start(index: int, block: dict[str, Any]) -> tuple[bytes, bool]:
    return _event("content_block_start", {"index": index, "content_block": block}), False


def _block_stop(index: int) -> tuple[bytes, bool]:
    return _event("content_block_stop", {"index": index}), False


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def _conversation(body: dict[str, Any]) -> Conversation:
    messages = body["messages"]
    last_user = max(
        (i for i, m in enumerate(messages) if m["role"] == "user" and _is_user_turn(m)),
        default=-1,
    )
    called: set[str] = set()
    outputs: list[str] = []
    for message in messages[last_user + 1 :]:
        for block in _blocks(message):
            if block.get("type") == "tool_use":
                called.add(block["name"])
            elif block.get("type") == "tool_result":
                outputs.append(_text(block.get("content")))
    return Conversation(
        last_user_text=_text(messages[last_user]["content"]) if last_user >= 0 else "",
        tools=[(tool["name"], tool.get("input_schema") or {}) for tool in body.get("tools") or ()],
        called_since_user=called,
        tool_outputs_since_user=outputs,
        input_words=count_words(_text(body.get("system")))
        + sum(count_words(_text(m["content"])) for m in messages),
    )


def _is_user_turn(message: dict[str, Any]) -> bool:
    """A user message that is more than tool results (those continue the assistant's turn)."""
    return any(block.get("type") != "tool_result" for block in _blocks(message))


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content or () if isinstance(block, dict)]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _request_problem(body: Any) -> str | None:
    """The checks the real API would fail on, so adapter bugs show up in tests."""
    if not isinstance(body, dict) or not body.get("model"):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if body.get("stream") is not True:
        return "This fake server only supports streaming ('stream': true)."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if messages[0].get("role") != "user":
        return 'messages: first message must use the "user" role'
    previous_tool_uses: set[str] = set()
    for position, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{position}.role: Input should be 'user' or 'assistant'"
        blocks = _blocks(message)
        if not blocks:
            return f"messages.{position}: content must not be empty"
        seen_other = False
        for block in blocks:
            kind = block.get("type")
            if kind == "text" and not block.get("text"):
                return f"messages.{position}: text content blocks must be non-empty"
            if kind == "tool_result":
                if block.get("tool_use_id") not in previous_tool_uses:
                    return (
                        f"messages.{position}: unexpected `tool_use_id` found in `tool_result`"
                        " blocks; each must match a `tool_use` block in the previous message."
                    )
                if seen_other:
                    return f"messages.{position}: `tool_result` blocks must come first."
            else:
                seen_other = True
            if kind == "tool_use" and not isinstance(block.get("input"), dict):
                return f"messages.{position}: tool_use.input must be an object"
        previous_tool_uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    return None


def _error(status: int, message: str) -> Response:
    error_type = _ERROR_TYPES.get(status, "api_error")
    return json_response(
        {"type": "error", "error": {"type": error_type, "message": message}}, status_code=status
    )


def _scripted_error(error: dict[str, Any]) -> Response:
    response = _error(int(error.get("status", 500)), str(error.get("message", "scripted error")))
    if error.get("retry_after") is not None:
        response.headers["retry-after"] = str(error["retry_after"])
    return response


def main(argv: list[str] | None = None) -> None:
    from agentruns.testing.server import serve_from_command_line

    serve_from_command_line(create_app, argv, description="Fake Anthropic Messages API server.")


if __name__ == "__main__":
    main()
