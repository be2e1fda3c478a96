"""A fake OpenAI-compatible Chat Completions server for tests and benchmarks.

    python -m agentruns.testing.fake_openai --port 8900

Serves `POST /v1/chat/completions` (streaming only) plus the `/_control/*`
routes of `fake_provider`. Set `AGENTRUNS_FAKE_OPENAI_KEY` (or pass
`require_key`) to make it demand that bearer token.
"""

from __future__ import annotations

import asyncio
import itertools
import time
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

KEY_ENV = "AGENTRUNS_FAKE_OPENAI_KEY"
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}
_completion_ids = itertools.count(1)


def create_app(*, require_key: str | bool | None = None) -> Starlette:
    """The fake server; `app.state.fake` is its `FakeProviderState`."""
    state = FakeProviderState(require_key=require_key_from_env(require_key, KEY_ENV))

    async def chat_completions(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "The request body is not valid JSON.")
        state.record(body)
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not state.key_accepted(token or None):
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        problem = _request_problem(body)
        if problem:
            return _error(400, problem)
        reply = state.next_reply(_conversation(body))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.error:
            return _scripted_error(reply.error)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        frames = _frames(reply, model=str(body.get("model")), include_usage=include_usage)
        state.in_flight.started()
        return StreamingResponse(
            paced_frames(frames, reply, state.in_flight), media_type="text/event-stream"
        )

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            *control_routes(state),
        ]
    )
    app.state.fake = state
    app.state.base_path = "/v1"
    return app


def _frames(reply: Reply, *, model: str, include_usage: bool) -> list[tuple[bytes, bool]]:
    """SSE frames for a reply; the bool marks frames paced like tokens."""
    base = {
        "id": f"chatcmpl-fake{next(_completion_ids)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return _sse({**base, "choices": [choice]})

    frames = [(chunk({"role": "assistant", "content": ""}), False)]
    frames += [(chunk({"content": word}), True) for word in split_words(reply.text)]
    for index, call in enumerate(reply.tool_calls):
        opening = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        frames.append((chunk({"tool_calls": [opening]}), True))
        for fragment in argument_fragments(call.arguments):
            piece = {"index": index, "function": {"arguments": fragment}}
            frames.append((chunk({"tool_calls": [piece]}), True))
    if reply.stream_error:
        error = {
            "message": "The server had an error.",
            "type": "server_error",
            **reply.stream_error,
        }
        frames.append((_sse({"error": error}), False))
        return frames
    frames.append((chunk({}, "tool_calls" if reply.tool_calls else "stop"), False))
    if include_usage:
        usage = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
        frames.append((_sse({**base, "choices": [], "usage": usage}), False))
    frames.append((b"data: [DONE]\n\n", False))
    return frames


def _conversation(body: dict[str, Any]) -> Conversation:
    messages = body["messages"]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    called: set[str] = set()
    outputs: list[str] = []
    for message in messages[last_user + 1 :]:
        for call in message.get("tool_calls") or ():
            called.add(call["function"]["name"])
        if message.get("role") == "tool":
            outputs.append(_text(message.get("content")))
    tools = [
        (tool["function"]["name"], tool["function"].get("parameters") or {})
        for tool in body.get("tools") or ()
    ]
    return Conversation(
        last_user_text=_text(messages[last_user].get("content")) if last_user >= 0 else "",
        tools=tools,
        called_since_user=called,
        tool_outputs_since_user=outputs,
        input_words=sum(count_words(_text(m.get("content"))) for m in messages),
    )


def _request_problem(body: Any) -> str | None:
    """The checks a real endpoint would fail on, so adapter bugs show up in tests."""
    if not isinstance(body, dict) or not body.get("model"):
        return "'model' is required."
    if body.get("stream") is not True:
        return "This fake server only supports streaming ('stream': true)."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array."
    call_ids: set[str] = set()
    for position, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant", "tool"):
            return f"messages[{position}].role is invalid: {role!r}."
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            if not call.get("id") or call.get("type") != "function" or not function.get("name"):
                return f"messages[{position}].tool_calls entries need id, type and function.name."
            if not isinstance(function.get("arguments"), str):
                return f"messages[{position}].tool_calls[].function.arguments must be a string."
            call_ids.add(call["id"])
        if role == "tool" and message.get("tool_call_id") not in call_ids:
            return (
                f"messages[{position}] with role 'tool' must be a response to a preceding"
                " message with 'tool_calls'."
            )
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _error(status: int, message: str, *, code: str | None = None) -> Response:
    error_type = _ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return json_response(body, status_code=status)


def _scripted_error(error: dict[str, Any]) -> Response:
    response = _error(int(error.get("status", 500)), str(error.get("message", "scripted error")))
    if error.get("retry_after") is not None:
        response.headers["retry-after"] = str(error["retry_after"])
    return response


def main(argv: list[str] | None = None) -> None:
    from agentruns.testing.server import serve_from_command_line

    serve_from_command_line(create_app, argv, description="Fake OpenAI-compatible server.")


if __name__ == "__main__":
    main()
