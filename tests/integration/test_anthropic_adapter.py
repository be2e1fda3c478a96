"""The real Anthropic adapter against the fake Messages API, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from agentruns.engine.models.anthropic import AnthropicModel
from agentruns.engine.models.base import (
    Finish,
    Message,
    ModelEvent,
    TextDelta,
    ToolCall,
    ToolDefinition,
    Usage,
)
from agentruns.engine.models.retrying import stream_with_retries
from agentruns.errors import ModelError
from agentruns.testing import FakeServer, start_in_thread
from agentruns.testing.fake_anthropic import create_app

KEY = "sk-ant-test"
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
        "content": "Checking.",
        "tool_calls": [
            {"id": "toolu_a", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
            {"id": "toolu_b", "name": "add", "arguments": '{"a": 2, "b": 3'},  # cut short
        ],
    },
    {"role": "tool", "tool_call_id": "toolu_a", "name": "get_time", "content": "12:00"},
    {"role": "tool", "tool_call_id": "toolu_b", "name": "add", "content": "invalid arguments"},
    {"role": "assistant", "content": "It is 12:00."},
    {"role": "system", "content": "Answer in French."},
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
def make_model(fake: FakeServer, client: httpx.AsyncClient) -> Callable[..., AnthropicModel]:
    def make(**options: Any) -> AnthropicModel:
        options = {"base_url": fake.url, "api_key": KEY, "timeout_s": 5.0, **options}
        return AnthropicModel("claude-fake", client=client, **options)

    return make


@pytest.fixture
def model(make_model: Callable[..., AnthropicModel]) -> AnthropicModel:
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
    model: AnthropicModel, fake: FakeServer
) -> None:
    text = "Bonjour, je  suis\nun modèle."
    fake.script({"text": text, "usage": {"input_tokens": 9, "output_tokens": 6}})

    events = await collect(model, user("hi"))

    assert text_of(events) == text
    assert sum(isinstance(e, TextDelta) for e in events) >= 5
    assert events[-2:] == [Usage(input_tokens=9, output_tokens=6), Finish("stop")]
    [body] = fake.requests()
    assert body["model"] == "claude-fake"
    assert body["stream"] is True
    assert body["max_tokens"] == 4096
    assert "system" not in body
    assert "tools" not in body


async def test_the_default_echo_mode_answers_the_last_user_message(model: AnthropicModel) -> None:
    events = await collect(model, [*HISTORY[:-1], {"role": "user", "content": "ping pong"}])

    assert text_of(events) == "echo: ping pong"


async def test_several_tool_uses_in_one_turn_are_assembled_from_fragments(
    model: AnthropicModel, fake: FakeServer
) -> None:
    fake.script(
        {
            "text": "Let me check.",
            "tool_calls": [
                {"id": "toolu_1", "name": "get_time", "arguments": {"tz": "Europe/Paris"}},
                {"id": "toolu_2", "name": "add", "arguments": '{"a": 2, "b": 3}'},
                {"id": "toolu_3", "name": "get_time", "arguments": ""},
            ],
            "usage": {"input_tokens": 30, "output_tokens": 20},
        }
    )

    events = await collect(model, user("time and sum?"), [TIME_TOOL, ADD_TOOL])

    assert text_of(events) == "Let me check."
    assert [e for e in events if isinstance(e, ToolCall)] == [
        ToolCall("toolu_1", "get_time", '{"tz":"Europe/Paris"}'),
        ToolCall("toolu_2", "add", '{"a": 2, "b": 3}'),
        ToolCall("toolu_3", "get_time", "{}"),
    ]
    assert events[-2:] == [Usage(30, 20), Finish("tool_calls")]
    [body] = fake.requests()
    assert body["tools"][1] == {
        "name": "add",
        "description": "Add two integers.",
        "input_schema": ADD_TOOL.parameters,
    }


async def test_history_and_settings_are_translated_to_the_wire_format(
    model: AnthropicModel, fake: FakeServer
) -> None:
    settings = {"temperature": 0.3, "max_tokens": 256, "stop": "END", "seed": 1, "base_url": "x"}
    await collect(model, HISTORY, [TIME_TOOL], settings)

    [body] = fake.requests()
    assert body["system"] == "You are helpful.\n\nAnswer in French."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What time is it in Paris, and 2+3?"}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_a",
                    "name": "get_time",
                    "input": {"tz": "Europe/Paris"},
                },
                {"type": "tool_use", "id": "toolu_b", "name": "add", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "12:00"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "invalid arguments"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "It is 12:00."}]},
        {"role": "user", "content": [{"type": "text", "text": "Thanks!"}]},
    ]
    assert (body["max_tokens"], body["temperature"], body["stop_sequences"]) == (256, 0.3, ["END"])
    assert "seed" not in body
    assert "base_url" not in body


async def test_a_user_message_right_after_tool_results_joins_their_turn(
    model: AnthropicModel, fake: FakeServer
) -> None:
    messages: list[Message] = [
        *user("go"),
        {"role": "assistant", "content": None, "tool_calls": [HISTORY[2]["tool_calls"][0]]},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "12:00"},
        {"role": "user", "content": "And now?"},
    ]
    await collect(model, messages)

    [body] = fake.requests()
    assert body["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "12:00"},
            {"type": "text", "text": "And now?"},
        ],
    }


async def test_a_tool_loop_runs_to_an_answer_in_tools_mode(
    model: AnthropicModel, fake: FakeServer
) -> None:
    fake.configure(mode="tools")
    messages = user("add please")

    for _ in range(3):
        events = await collect(model, messages, [ADD_TOOL, TIME_TOOL])
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
            assert call.id.startswith("toolu_")
            arguments = orjson.loads(call.arguments)
            result = str(arguments["a"] + arguments["b"])
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

    assert text_of(events) == "done: 2"
    assert len(fake.requests()) == 2


async def test_overloaded_then_success_goes_through_stream_with_retries(
    model: AnthropicModel, fake: FakeServer
) -> None:
    fake.script(
        {"error": {"status": 529, "message": "Overloaded"}},
        {"error": {"status": 500, "message": "Internal server error"}},
        {"text": "made it"},
    )
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    events = [e async for e in stream_with_retries(model, user("hi"), [], {}, sleep=sleep)]

    assert text_of(events) == "made it"
    assert len(sleeps) == 2
    assert len(fake.requests()) == 3


async def test_a_rate_limit_is_retryable_and_its_retry_after_is_honoured(
    model: AnthropicModel, fake: FakeServer
) -> None:
    fake.script(
        {"error": {"status": 429, "message": "Number of requests exceeded", "retry_after": 1}},
        {"text": "fine"},
    )
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    events = [e async for e in stream_with_retries(model, user("hi"), [], {}, sleep=sleep)]

    assert sleeps == [1.0]
    assert text_of(events) == "fine"


async def test_a_wrong_key_is_not_retryable_and_says_what_to_do(
    make_model: Callable[..., AnthropicModel], fake: FakeServer
) -> None:
    with pytest.raises(ModelError) as raised:
        [e async for e in stream_with_retries(make_model(api_key="nope"), user("hi"), [], {})]

    error = raised.value
    assert (error.retryable, error.status_code) == (False, 401)
    assert error.message == (
        f"Anthropic API at {fake.url} rejected the API key (401): invalid x-api-key."
        " Set ANTHROPIC_API_KEY or model_settings.api_key_env."
    )
    assert len(fake.requests()) == 1


async def test_a_bad_request_names_the_problem(model: AnthropicModel, fake: FakeServer) -> None:
    fake.script({"error": {"status": 400, "message": "max_tokens: 999999 > 64000"}})

    with pytest.raises(ModelError, match="max_tokens: 999999 > 64000") as raised:
        await collect(model, user("hi"))
    assert not raised.value.retryable


async def test_a_cut_stream_is_a_retryable_error(model: AnthropicModel, fake: FakeServer) -> None:
    fake.script({"text": "one two three four five six seven", "cut_stream": True})

    with pytest.raises(ModelError, match="closed the stream") as raised:
        await collect(model, user("hi"))
    assert raised.value.retryable


async def test_an_error_event_inside_the_stream_is_a_model_error(
    model: AnthropicModel, fake: FakeServer
) -> None:
    fake.script({"text": "partial", "stream_error": {"message": "Overloaded"}})

    with pytest.raises(ModelError, match="mid-stream: Overloaded") as raised:
        await collect(model, user("hi"))
    assert raised.value.retryable

    fake.script(
        {"stream_error": {"type": "invalid_request_error", "message": "prompt is too long"}}
    )
    with pytest.raises(ModelError, match="prompt is too long") as raised:
        await collect(model, user("hi"))
    assert not raised.value.retryable


async def test_tokens_arrive_as_they_are_produced(model: AnthropicModel, fake: FakeServer) -> None:
    fake.script({"text": "a b c d e f", "token_delay_s": 0.05, "first_token_delay_s": 0.1})
    started = time.perf_counter()
    arrivals: list[float] = []

    async for event in model.stream(user("hi"), [], {}):
        if isinstance(event, TextDelta):
            arrivals.append(time.perf_counter() - started)

    assert len(arrivals) == 6
    assert 0.1 <= arrivals[0] < 0.2
    assert arrivals[-1] - arrivals[0] >= 0.2


async def test_the_adapter_adds_little_latency(model: AnthropicModel) -> None:
    await collect(model, user("warm up"))
    started = time.perf_counter()
    for _ in range(20):
        await collect(model, user("hello there"))

    assert (time.perf_counter() - started) / 20 < 0.05


# Events the fake never sends but the real API does, replayed through a mock transport.


async def test_cache_usage_thinking_blocks_and_pings_are_handled() -> None:
    def event(data: dict[str, Any]) -> bytes:
        return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    usage = {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1}
    body = b"".join(
        [
            event({"type": "message_start", "message": {"usage": usage}}),
            event({"type": "ping"}),
            event(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": ""},
                }
            ),
            event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": "hmm"},
                }
            ),
            event({"type": "content_block_stop", "index": 0}),
            event(
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "text", "text": ""},
                }
            ),
            event(
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "text_delta", "text": "Hi"},
                }
            ),
            event({"type": "content_block_stop", "index": 1}),
            event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "max_tokens"},
                    "usage": {"output_tokens": 7},
                }
            ),
            event({"type": "message_stop"}),
        ]
    )

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        model = AnthropicModel("c", api_key="k", client=client)
        events = await collect(model, user("hi"))

    assert events == [TextDelta("Hi"), Usage(105, 7), Finish("length")]
