"""The real OpenAI-compatible adapter against the fake server, over real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from agentruns.engine.models.base import (
    Finish,
    Message,
    ModelEvent,
    TextDelta,
    ToolCall,
    ToolDefinition,
    Usage,
)
from agentruns.engine.models.openai import OpenAIChatModel
from agentruns.engine.models.retrying import stream_with_retries
from agentruns.errors import ModelError
from agentruns.testing import FakeServer, start_in_thread
from agentruns.testing.fake_openai import create_app

KEY = "sk-test"
TIME_TOOL = ToolDefinition(
    "get_time",
    "The time in a timezone.",
    {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
)
ADD_TOOL = ToolDefinition(
    "add",
    "Add two integers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
HISTORY: list[Message] = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What time is it in Paris, and 2+3?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
            {"id": "call_b", "name": "add", "arguments": '{"a": 2, "b": 3}'},
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "name": "get_time", "content": "12:00"},
    {"role": "tool", "tool_call_id": "call_b", "name": "add", "content": "5"},
    {"role": "assistant", "content": "It is 12:00, and 2+3=5."},
    {"role": "user", "content": "Thanks!"},
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with start_in_thread(create_app(require_key=KEY)) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeServer) -> None:
    fake.reset()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def make_model(fake: FakeServer, client: httpx.AsyncClient) -> Callable[..., OpenAIChatModel]:
    def make(**options: Any) -> OpenAIChatModel:
        options = {"base_url": fake.url, "api_key": KEY, "timeout_s": 5.0, **options}
        return OpenAIChatModel("fake-model", client=client, **options)

    return make


@pytest.fixture
def model(make_model: Callable[..., OpenAIChatModel]) -> OpenAIChatModel:
    return make_model()


async def collect(
    model: Any,
    messages: list[Message],
    tools: list[ToolDefinition] | None = None,
    settings: dict[str, Any] | None = None,
) -> list[ModelEvent]:
    return [e async for e in model.stream(messages, tools or [], settings or {})]


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


async def test_text_streams_in_pieces_that_join_exactly(
    model: OpenAIChatModel, fake: FakeServer
) -> None:
    text = "Hello there,  how are\nyou today?"
    fake.script({"text": text, "usage": {"input_tokens": 12, "output_tokens": 7}})

    events = await collect(model, user("hi"))

    assert text_of(events) == text
    assert sum(isinstance(e, TextDelta) for e in events) >= 5
    assert events[-2:] == [Usage(input_tokens=12, output_tokens=7), Finish("stop")]
    [body] = fake.requests()
    assert body["model"] == "fake-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "tools" not in body


async def test_the_default_echo_mode_answers_the_last_user_message(
    model: OpenAIChatModel,
) -> None:
    events = await collect(model, [*HISTORY[:-1], {"role": "user", "content": "ping pong"}])

    assert text_of(events) == "echo: ping pong"


async def test_several_tool_calls_in_one_turn_are_assembled_from_fragments(
    model: OpenAIChatModel, fake: FakeServer
) -> None:
    fake.script(
        {
            "text": "Let me check.",
            "tool_calls": [
                {"id": "call_1", "name": "get_time", "arguments": {"tz": "Europe/Paris"}},
                {"id": "call_2", "name": "add", "arguments": '{"a": 2, "b": 3}'},
            ],
        }
    )

    events = await collect(model, user("time and sum?"), [TIME_TOOL, ADD_TOOL])

    assert text_of(events) == "Let me check."
    assert [e for e in events if isinstance(e, ToolCall)] == [
        ToolCall("call_1", "get_time", '{"tz":"Europe/Paris"}'),
        ToolCall("call_2", "add", '{"a": 2, "b": 3}'),
    ]
    assert events[-1] == Finish("tool_calls")
    [body] = fake.requests()
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a timezone.",
            "parameters": TIME_TOOL.parameters,
        },
    }


async def test_history_and_settings_are_translated_to_the_wire_format(
    model: OpenAIChatModel, fake: FakeServer
) -> None:
    settings = {
        "temperature": 0.2,
        "max_tokens": 50,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "base_url": "not sent",
        "api_key_env": "NOT_SENT",
    }
    await collect(model, HISTORY, [TIME_TOOL], settings)

    [body] = fake.requests()
    assert body["messages"] == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What time is it in Paris, and 2+3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_b", "content": "5"},
        {"role": "assistant", "content": "It is 12:00, and 2+3=5."},
        {"role": "user", "content": "Thanks!"},
    ]
    sent = {k: body[k] for k in ("temperature", "max_tokens", "top_p", "stop", "seed")}
    assert sent == {"temperature": 0.2, "max_tokens": 50, "top_p": 0.9, "stop": ["\n\n"], "seed": 7}
    assert "base_url" not in body
    assert "api_key_env" not in body


async def test_a_tool_loop_runs_to_an_answer_in_tools_mode(
    model: OpenAIChatModel, fake: FakeServer
) -> None:
    fake.configure(mode="tools")
    messages = user("what time is it?")

    for _ in range(3):
        events = await collect(model, messages, [TIME_TOOL, ADD_TOOL])
        calls = [e for e in events if isinstance(e, ToolCall)]
        if not calls:
            break
        messages.append(
            {
                "role": "assistant",
                "content": text_of(events) or None,
                "tool_calls": [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls
                ],
            }
        )
        for call in calls:
            assert orjson.loads(call.arguments) == {"tz": "example"}
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": "noon"}
            )

    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert text_of(events) == "done: noon"
    assert len(fake.requests()) == 2


async def test_a_server_error_then_success_goes_through_stream_with_retries(
    model: OpenAIChatModel, fake: FakeServer
) -> None:
    fake.script({"error": {"status": 500, "message": "upstream exploded"}}, {"text": "ok now"})
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    events = [e async for e in stream_with_retries(model, user("hi"), [], {}, sleep=sleep)]

    assert text_of(events) == "ok now"
    assert len(sleeps) == 1
    assert len(fake.requests()) == 2


async def test_a_rate_limit_is_retryable_and_its_retry_after_is_honoured(
    model: OpenAIChatModel, fake: FakeServer
) -> None:
    fake.script(
        {"error": {"status": 429, "message": "Slow down", "retry_after": 1}}, {"text": "fine"}
    )
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    events = [e async for e in stream_with_retries(model, user("hi"), [], {}, sleep=sleep)]

    assert sleeps == [1.0]
    assert text_of(events) == "fine"


async def test_a_rate_limit_error_carries_status_and_retry_after(
    model: OpenAIChatModel, fake: FakeServer
) -> None:
    fake.script({"error": {"status": 429, "message": "Slow down", "retry_after": 2}})

    with pytest.raises(ModelError) as raised:
        await collect(model, user("hi"))

    error = raised.value
    assert (error.retryable, error.status_code, error.retry_after) == (True, 429, 2.0)
    assert "rate limiting" in error.message
    assert "Slow down" in error.message


async def test_a_wrong_key_is_not_retryable_and_says_what_to_do(
    make_model: Callable[..., OpenAIChatModel], fake: FakeServer
) -> None:
    with pytest.raises(ModelError) as raised:
        await collect(make_model(api_key="sk-wrong"), user("hi"))

    error = raised.value
    assert not error.retryable
    assert error.status_code == 401
    assert error.message == (
        f"OpenAI-compatible endpoint {fake.url} rejected the API key (401):"
        " Incorrect API key provided. Set OPENAI_API_KEY or model_settings.api_key_env."
    )


async def test_a_missing_key_is_reported_as_missing(
    make_model: Callable[..., OpenAIChatModel],
) -> None:
    model = make_model(api_key=None, api_key_env="GROQ_API_KEY")

    with pytest.raises(ModelError, match="requires an API key and none was set") as raised:
        await collect(model, user("hi"))
    assert "Set GROQ_API_KEY" in raised.value.message


async def test_client_errors_are_not_retried(model: OpenAIChatModel, fake: FakeServer) -> None:
    fake.script(
        {"error": {"status": 404, "message": "The model `fake-model` does not exist"}},
        {"error": {"status": 400, "message": "Invalid 'messages'"}},
    )

    for expected in ("has no model 'fake-model'", r"rejected the request \(400\): Invalid"):
        with pytest.raises(ModelError, match=expected) as raised:
            [e async for e in stream_with_retries(model, user("hi"), [], {})]
        assert not raised.value.retryable
    assert len(fake.requests()) == 2


async def test_an_invalid_request_is_rejected_by_the_fake(model: OpenAIChatModel) -> None:
    orphan: list[Message] = [{"role": "tool", "tool_call_id": "nope", "content": "x"}]

    with pytest.raises(ModelError, match="must be a response to a preceding message"):
        await collect(model, orphan)


async def test_a_cut_stream_is_a_retryable_error(model: OpenAIChatModel, fake: FakeServer) -> None:
    fake.script({"text": "one two three four five six", "cut_stream": True})
    seen: list[ModelEvent] = []

    with pytest.raises(ModelError, match="closed the stream") as raised:
        async for event in stream_with_retries(model, user("hi"), [], {}):
            seen.append(event)

    assert raised.value.retryable
    assert text_of(seen).startswith("one ")  # output had started, so no retry
    assert len(fake.requests()) == 1


async def test_a_stream_cut_before_any_output_is_retried(
    model: OpenAIChatModel, fake: FakeServer
) -> None:
    # Tool calls are only emitted once complete, so a cut inside one yields nothing.
    fake.script(
        {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}], "cut_stream": True},
        {"text": "recovered"},
    )

    async def no_sleep(_: float) -> None:
        return None

    stream = stream_with_retries(model, user("hi"), [ADD_TOOL], {}, sleep=no_sleep)
    events = [e async for e in stream]

    assert text_of(events) == "recovered"
    assert len(fake.requests()) == 2


async def test_an_error_inside_the_stream_is_a_model_error(
    model: OpenAIChatModel, fake: FakeServer
) -> None:
    fake.script({"text": "partial", "stream_error": {"message": "model crashed"}})

    with pytest.raises(ModelError, match="mid-stream: model crashed") as raised:
        await collect(model, user("hi"))
    assert raised.value.retryable


async def test_an_unreachable_server_is_retryable(client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAIChatModel(
        "m", base_url=f"http://127.0.0.1:{port}/v1", api_key=None, client=client
    )

    with pytest.raises(ModelError, match="could not be reached") as raised:
        await collect(model, user("hi"))
    assert raised.value.retryable


async def test_a_slow_server_times_out_retryably(
    make_model: Callable[..., OpenAIChatModel], fake: FakeServer
) -> None:
    fake.script({"text": "late", "delay_s": 0.5})

    with pytest.raises(ModelError, match=r"did not answer within 0.1s") as raised:
        await collect(make_model(timeout_s=0.1), user("hi"))
    assert raised.value.retryable


async def test_tokens_arrive_as_they_are_produced(model: OpenAIChatModel, fake: FakeServer) -> None:
    fake.script({"text": "a b c d e f", "token_delay_s": 0.05, "first_token_delay_s": 0.1})
    started = time.perf_counter()
    arrivals: list[float] = []

    async for event in model.stream(user("hi"), [], {}):
        if isinstance(event, TextDelta):
            arrivals.append(time.perf_counter() - started)

    assert len(arrivals) == 6
    assert 0.1 <= arrivals[0] < 0.2
    assert arrivals[-1] - arrivals[0] >= 0.2  # five gaps of 50 ms, not buffered


async def test_the_adapter_adds_little_latency(model: OpenAIChatModel) -> None:
    await collect(model, user("warm up"))
    started = time.perf_counter()
    for _ in range(20):
        await collect(model, user("hello there"))

    assert (time.perf_counter() - started) / 20 < 0.05


async def test_control_endpoints_steer_the_fake_over_http(
    fake: FakeServer, client: httpx.AsyncClient, model: OpenAIChatModel
) -> None:
    control = fake.root_url + "/_control"
    response = await client.post(f"{control}/config", json={"mode": "tools", "token_delay_s": 0})
    assert response.json()["mode"] == "tools"
    assert (await client.post(f"{control}/config", json={"mode": "nope"})).status_code == 400
    await client.post(f"{control}/script", json={"responses": [{"text": "scripted"}]})

    assert text_of(await collect(model, user("hi"), [TIME_TOOL])) == "scripted"
    assert [e for e in await collect(model, user("hi"), [TIME_TOOL]) if isinstance(e, ToolCall)]

    recorded = (await client.get(f"{control}/requests")).json()
    assert [r["messages"][-1]["content"] for r in recorded] == ["hi", "hi"]
    await client.post(f"{control}/reset")
    assert (await client.get(f"{control}/requests")).json() == []
    assert fake.state.config.mode == "echo"


def test_the_fake_runs_as_a_command_and_prints_only_its_address() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "agentruns.testing.fake_openai", "--port", "0", "--mode", "echo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ")
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "yo"}]}
        with httpx.Client() as http:
            response = http.post(f"{url}/v1/chat/completions", json=body)
        assert response.status_code == 200
        assert '"content":"yo"' in response.text
        assert response.text.endswith("data: [DONE]\n\n")
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert out == ""
    assert "Warning" not in err


# Compatibility with servers that bend the format, replayed through a mock transport.


def sse_body(*chunks: Any, done: bool = True) -> bytes:
    lines = [b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks]
    return b": keep-alive\n\n" + b"".join(lines) + (b"data:[DONE]\n\n" if done else b"")


async def replay(body: bytes, content_type: str = "text/event-stream") -> list[ModelEvent]:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        model = OpenAIChatModel("m", base_url="http://compat/v1", api_key=None, client=client)
        return await collect(model, user("hi"))


def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": None,
    }


async def test_tool_calls_without_index_and_stop_instead_of_tool_calls() -> None:
    body = sse_body(
        choice({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x":1}'}}]}),
        choice({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": ""}}]}),
        choice({}, "stop"),
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    )

    assert await replay(body) == [
        ToolCall("a", "f", '{"x":1}'),
        ToolCall("b", "g", "{}"),
        Usage(3, 4),
        Finish("tool_calls"),
    ]


async def test_a_finish_reason_without_done_is_accepted_but_nothing_at_all_is_not() -> None:
    finished = sse_body(choice({"content": "hi"}), choice({}, "length"), done=False)
    assert await replay(finished) == [TextDelta("hi"), Finish("length")]

    with pytest.raises(ModelError, match="closed the stream"):
        await replay(sse_body(choice({"content": "hi"}), done=False))


async def test_a_json_error_body_with_status_200_is_a_model_error() -> None:
    body = orjson.dumps({"error": {"message": "model not loaded", "code": 503}})

    with pytest.raises(ModelError, match="model not loaded") as raised:
        await replay(body, content_type="application/json")
    assert raised.value.retryable
