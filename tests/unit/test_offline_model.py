"""The offline `test` model: deterministic tool calls and answers, no I/O."""

from __future__ import annotations

import time
from typing import Any

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
from agentruns.engine.models.offline import (
    TestModel,
    example_arguments,
    split_words,
    turn_since_last_user,
)

TIME_TOOL = ToolDefinition(
    "get_current_time",
    "The current time in a timezone.",
    {
        "type": "object",
        "properties": {"timezone": {"type": "string", "default": "UTC"}},
        "required": ["timezone"],
    },
)
ADD_TOOL = ToolDefinition(
    "add",
    "Add two numbers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
)


async def collect(
    messages: list[Message],
    tools: list[ToolDefinition] | None = None,
    settings: dict[str, Any] | None = None,
) -> list[ModelEvent]:
    return [e async for e in TestModel().stream(messages, tools or [], settings or {})]


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def as_history(calls: list[ToolCall]) -> Message:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
    }


async def test_answer_quotes_the_user_and_streams_word_by_word() -> None:
    events = await collect([{"role": "user", "content": "hi there"}])

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert text_of(events) == 'test model: you said "hi there".'
    assert [d.text for d in deltas] == ["test ", "model: ", "you ", "said ", '"hi ', 'there".']
    assert events[-2:] == [Usage(input_tokens=2, output_tokens=6), Finish("stop")]


async def test_calls_every_tool_once_then_answers_with_their_outputs() -> None:
    messages: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what time is it"},
    ]
    events = await collect(messages, [TIME_TOOL, ADD_TOOL])

    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls == [
        ToolCall("call_1", "get_current_time", '{"timezone":"UTC"}'),
        ToolCall("call_2", "add", '{"a":1,"b":1.0}'),
    ]
    assert not any(isinstance(e, TextDelta) for e in events)
    assert events[-1] == Finish("tool_calls")

    messages += [
        as_history(calls),
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "name": "get_current_time",
            "content": "2026-05-01T10:00:00Z",
        },
        {"role": "tool", "tool_call_id": "call_2", "content": "2"},  # name found via the id
    ]
    events = await collect(messages, [TIME_TOOL, ADD_TOOL])

    assert text_of(events) == (
        'test model: you said "what time is it". '
        'Tool get_current_time returned "2026-05-01T10:00:00Z". Tool add returned "2".'
    )
    assert events[-1] == Finish("stop")


async def test_only_tools_not_yet_called_since_the_user_spoke_are_called() -> None:
    messages: list[Message] = [
        {"role": "user", "content": "go"},
        as_history([ToolCall("call_1", "get_current_time", "{}")]),
        {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
    ]
    events = await collect(messages, [TIME_TOOL, ADD_TOOL])

    assert [e for e in events if isinstance(e, ToolCall)] == [
        ToolCall("call_2", "add", '{"a":1,"b":1.0}')
    ]


async def test_a_new_user_message_calls_the_tools_again_with_new_ids() -> None:
    messages: list[Message] = [
        {"role": "user", "content": "first"},
        as_history([ToolCall("call_1", "get_current_time", "{}")]),
        {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
        {"role": "assistant", "content": "It is noon."},
        {"role": "user", "content": "and now?"},
    ]
    events = await collect(messages, [TIME_TOOL])

    assert [e for e in events if isinstance(e, ToolCall)] == [
        ToolCall("call_2", "get_current_time", '{"timezone":"UTC"}')
    ]


async def test_without_a_user_message_it_still_answers() -> None:
    events = await collect([{"role": "system", "content": "You are terse."}])

    assert text_of(events) == "test model: there is no user message."


async def test_long_tool_outputs_are_shortened_in_the_answer() -> None:
    messages: list[Message] = [
        {"role": "user", "content": "read"},
        as_history([ToolCall("call_1", "read", "{}")]),
        {"role": "tool", "tool_call_id": "call_1", "name": "read", "content": "x" * 1000},
    ]
    text = text_of(await collect(messages))

    assert len(text) < 300
    assert text.endswith('…".')


async def test_test_delay_s_slows_the_stream_down() -> None:
    started = time.perf_counter()
    events = await collect([{"role": "user", "content": "a b c"}], settings={"test_delay_s": 0.02})

    deltas = sum(isinstance(e, TextDelta) for e in events)
    assert time.perf_counter() - started >= 0.02 * (deltas - 1)


def test_split_words_joins_back_exactly() -> None:
    text = "  two  spaces\nnew line\ttab  "
    assert "".join(split_words(text)) == text
    assert split_words("") == []


def test_turn_since_last_user_ignores_earlier_turns() -> None:
    messages: list[Message] = [
        {"role": "user", "content": "old"},
        as_history([ToolCall("call_1", "a", "{}")]),
        {"role": "tool", "tool_call_id": "call_1", "content": "A"},
        {"role": "user", "content": [{"type": "text", "text": "new"}]},
        as_history([ToolCall("call_2", "b", "{}")]),
        {"role": "tool", "tool_call_id": "call_2", "content": "B"},
    ]
    assert turn_since_last_user(messages) == ("new", {"b"}, [("b", "B")])


def test_example_arguments_follow_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer", "minimum": 5},
            "ratio": {"type": "number", "maximum": 0.5},
            "verbose": {"type": "boolean"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "two": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            "city": {"type": "string", "examples": ["Paris"]},
            "limit": {"type": "integer", "default": 10},
            "when": {"type": "string", "format": "date"},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
            "nullable": {"type": ["null", "boolean"]},
            "kind": {"const": "fixed"},
            "address": {"$ref": "#/$defs/Address"},
        },
        "required": ["name", "extra"],
        "$defs": {
            "Address": {
                "type": "object",
                "properties": {"street": {"type": "string"}, "zip": {"type": "integer"}},
            }
        },
    }
    assert example_arguments(schema) == {
        "name": "example",
        "count": 5,
        "ratio": 0.5,
        "verbose": True,
        "unit": "celsius",
        "tags": [],
        "two": [1, 1],
        "city": "Paris",
        "limit": 10,
        "when": "2026-01-01",
        "maybe": 1,
        "nullable": True,
        "kind": "fixed",
        "address": {"street": "example", "zip": 1},
        "extra": "example",
    }


def test_example_arguments_survive_odd_schemas() -> None:
    recursive = {"type": "object", "properties": {"child": {"$ref": "#"}}}
    assert orjson.dumps(example_arguments(recursive))  # bounded depth, serialisable
    assert example_arguments({}) == {}
    assert example_arguments({"type": "string"}) == {}
    assert example_arguments({"properties": {"x": {"$ref": "https://elsewhere"}}}) == {
        "x": "example"
    }
