"""`test`: a deterministic offline model for demos, tests and first runs.

It exercises the whole agent loop without a provider: first it calls every
tool it was given (once per user message, with arguments made up from each
tool's JSON schema), then it answers with a sentence quoting the user and
the tool results, streamed word by word.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
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
    message_text,
)

__all__ = [
    "TEST_MODEL_NAME",
    "TestModel",
    "example_arguments",
    "example_value",
    "split_words",
    "turn_since_last_user",
]

TEST_MODEL_NAME = "test"
_MAX_QUOTE_CHARS = 200
_MAX_SCHEMA_DEPTH = 8
_WORD = re.compile(r"\S+\s*|\s+")
_STRING_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


class TestModel:
    """The offline `test` model. Settings: `test_delay_s` slows it down for demos."""

    __test__ = False  # not a pytest test class, despite the name
    name = TEST_MODEL_NAME

    async def stream(
        self, messages: list[Message], tools: list[ToolDefinition], settings: dict[str, Any]
    ) -> AsyncIterator[ModelEvent]:
        delay = float(settings.get("test_delay_s") or 0)
        input_tokens = sum(_count_words(message_text(m.get("content"))) for m in messages)
        user_text, called, outputs = turn_since_last_user(messages)
        pending = [tool for tool in tools if tool.name not in called]
        if pending:
            next_id = 1 + sum(len(m.get("tool_calls") or ()) for m in messages)
            output_tokens = 0
            for offset, tool in enumerate(pending):
                if delay and offset:
                    await asyncio.sleep(delay)
                arguments = orjson.dumps(example_arguments(tool.parameters)).decode()
                output_tokens += _count_words(f"{tool.name} {arguments}")
                yield ToolCall(id=f"call_{next_id + offset}", name=tool.name, arguments=arguments)
            yield Usage(input_tokens=input_tokens, output_tokens=output_tokens)
            yield Finish("tool_calls")
            return
        text = _answer(user_text, outputs)
        for index, word in enumerate(split_words(text)):
            if delay and index:
                await asyncio.sleep(delay)
            yield TextDelta(word)
        yield Usage(input_tokens=input_tokens, output_tokens=_count_words(text))
        yield Finish("stop")


def turn_since_last_user(
    messages: list[Message],
) -> tuple[str | None, set[str], list[tuple[str, str]]]:
    """The last user message's text, the tools called since, and their outputs in order."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    user_text = message_text(messages[last_user].get("content")) if last_user >= 0 else None
    names_by_id: dict[str, str] = {}
    called: set[str] = set()
    outputs: list[tuple[str, str]] = []
    for message in messages[last_user + 1 :]:
        if message["role"] == "assistant":
            for call in message.get("tool_calls") or ():
                names_by_id[call["id"]] = call["name"]
                called.add(call["name"])
        elif message["role"] == "tool":
            name = message.get("name") or names_by_id.get(message.get("tool_call_id", ""), "?")
            outputs.append((name, message_text(message.get("content"))))
    return user_text, called, outputs


def split_words(text: str) -> list[str]:
    """Words with their trailing whitespace, so the pieces join back to `text` exactly."""
    return _WORD.findall(text)


def example_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """Arguments that satisfy a tool's (object) parameter schema, made up from it."""
    value = example_value(schema, root=schema)
    return value if isinstance(value, dict) else {}


def example_value(schema: Any, *, root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A plausible value for a JSON schema: defaults and examples first, then by type."""
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return None
    root = root if root is not None else schema
    if isinstance(schema.get("$ref"), str):
        return example_value(_resolve_ref(root, schema["$ref"]), root=root, depth=depth + 1)
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            usable = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return example_value((usable or options)[0], root=root, depth=depth + 1)
    kind = _schema_type(schema)
    if kind == "string":
        text = _STRING_FORMATS.get(schema.get("format", ""), "example")
        return text.ljust(int(schema.get("minLength") or 0), "x")
    if kind in ("integer", "number"):
        return _example_number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        count = int(schema.get("minItems") or 0)
        return [example_value(schema.get("items", {}), root=root, depth=depth + 1)] * count
    properties = schema.get("properties") or {}
    names = list(properties) + [n for n in schema.get("required") or () if n not in properties]
    return {
        name: example_value(properties.get(name, {}), root=root, depth=depth + 1) for name in names
    }


def _schema_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _example_number(schema: dict[str, Any], *, integer: bool) -> int | float:
    value: float = 1
    if isinstance(schema.get("minimum"), int | float):
        value = max(value, schema["minimum"])
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        value = max(value, schema["exclusiveMinimum"] + 1)
    if isinstance(schema.get("maximum"), int | float):
        value = min(value, schema["maximum"])
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        value = min(value, schema["exclusiveMaximum"] - 1)
    return int(value) if integer else float(value)


def _resolve_ref(root: dict[str, Any], ref: str) -> Any:
    # Only local references (`#/$defs/Name`), which is what tool schemas use.
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node


def _answer(user_text: str | None, outputs: list[tuple[str, str]]) -> str:
    if user_text is None:
        parts = ["test model: there is no user message."]
    else:
        parts = [f'test model: you said "{_quote(user_text)}".']
    parts += [f'Tool {name} returned "{_quote(output)}".' for name, output in outputs]
    return " ".join(parts)


def _quote(text: str) -> str:
    return text if len(text) <= _MAX_QUOTE_CHARS else text[: _MAX_QUOTE_CHARS - 1] + "…"


def _count_words(text: str) -> int:
    return len(text.split())
