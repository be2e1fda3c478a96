"""Client-side tools: the handlers a caller registers, and running them for a run's tool calls.

A handler is `(args: dict, agent_id: str, run_id: str) -> str`, async or plain; a plain one
runs in a thread so it never blocks an event loop. Whatever a handler does, the run gets a
string: its return value (non-strings as JSON text), or an error text the model can read.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

from .errors import MissingToolHandler, ToolHandlerError

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

__all__ = [
    "LocalTool",
    "ToolCall",
    "ToolHandler",
    "ToolResults",
    "ToolsMap",
    "call_tool",
    "call_tool_blocking",
    "normalize_tools",
    "output_text",
    "require_handlers",
    "run_calls",
    "run_calls_blocking",
    "tool_responses",
]

log = logging.getLogger("agentruns.client")

ToolHandler: TypeAlias = Callable[[dict[str, Any], str, str], "Awaitable[Any] | Any"]
# `set_tools` takes {name: (schema or None, handler)}; a bare handler is accepted too.
ToolsMap: TypeAlias = Mapping[
    str, "tuple[Mapping[str, Any] | None, ToolHandler] | ToolHandler | LocalTool"
]
# `send_tool_responses` takes {tool_call_id: output} or [{"tool_call_id", "output"}, ...].
ToolResults: TypeAlias = "Mapping[str, Any] | Sequence[Mapping[str, Any]]"

# Threads for the plain handlers of one turn; more parallel calls than this wait their turn.
MAX_HANDLER_THREADS = 16


@dataclass(frozen=True)
class ToolCall:
    """One pending call of a run, as the server lists it: `arguments` is the model's JSON text."""

    id: str
    name: str
    arguments: str

    @classmethod
    def from_dict(cls, call: Mapping[str, Any]) -> ToolCall:
        arguments = call.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
        return cls(id=str(call["id"]), name=str(call["name"]), arguments=arguments)


@dataclass(frozen=True)
class LocalTool:
    """A handler and, optionally, the JSON Schema its arguments are checked against first."""

    name: str
    parameters: Mapping[str, Any] | None
    handler: ToolHandler


def normalize_tools(tools: ToolsMap | None) -> dict[str, LocalTool]:
    """`set_tools`' mapping as `LocalTool`s, checked now rather than at the first call.

    A schema may be the `parameters` JSON Schema itself or a whole tool spec holding one
    (`{"name", "description", "parameters"}`), so the dict used to define the tool fits.
    """
    local: dict[str, LocalTool] = {}
    for name, entry in (tools or {}).items():
        schema: Mapping[str, Any] | None
        if isinstance(entry, LocalTool):
            local[name] = entry
            continue
        if isinstance(entry, tuple):
            if len(entry) != 2:
                raise TypeError(f"tool {name!r}: expected (schema_or_None, handler)")
            schema, handler = entry
        else:
            schema, handler = None, entry
        if not callable(handler):
            raise TypeError(f"tool {name!r}: the handler is not callable")
        if schema is not None and not isinstance(schema, Mapping):
            raise TypeError(f"tool {name!r}: the schema must be a dict or None")
        parameters = _parameters(schema) if schema is not None else None
        if parameters is not None:
            _validator_class(parameters).check_schema(parameters)
        local[name] = LocalTool(name, parameters, handler)
    return local


def _validator_class(schema: Mapping[str, Any]) -> type[Validator]:
    # Imported here, not with the SDK: most clients never declare a local tool, and
    # jsonschema costs more memory than the rest of the SDK.
    from jsonschema.validators import validator_for

    return validator_for(schema)


def _parameters(schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The JSON Schema of a tool's arguments, from itself or from a tool spec holding it."""
    is_spec = "parameters" in schema or "name" in schema or schema.get("type") == "function"
    return schema.get("parameters") if is_spec else schema


def require_handlers(
    run_id: str, calls: Sequence[ToolCall], tools: Mapping[str, LocalTool]
) -> None:
    """Raise `MissingToolHandler` before any handler runs, so a turn is answered whole or not."""
    missing = [call.name for call in calls if call.name not in tools]
    if missing:
        raise MissingToolHandler(run_id, missing)


def output_text(value: Any) -> str:
    """What the run receives for a handler's return value: strings as they are, else JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


def _error_text(call: ToolCall, exc: BaseException) -> str:
    # Worded like the server's own tool errors, so the model reacts to both the same way.
    return f"error: tool {call.name} failed: {type(exc).__name__}: {exc}"


def _arguments(tool: LocalTool, call: ToolCall) -> dict[str, Any] | str:
    """The parsed arguments, or the error text to answer instead of calling the handler."""
    try:
        arguments = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError as exc:
        return f"error: the arguments of {call.name} are not valid JSON ({exc}); call it again"
    if not isinstance(arguments, dict):
        return f"error: the arguments of {call.name} must be a JSON object; call it again"
    if tool.parameters is not None:
        from jsonschema.exceptions import best_match

        validator = _validator_class(tool.parameters)(tool.parameters)
        problem = best_match(validator.iter_errors(arguments))
        if problem is not None:
            where = "/".join(str(part) for part in problem.absolute_path) or "arguments"
            return f"error: invalid arguments for {call.name} at {where}: {problem.message}"
    return arguments


def _failed(call: ToolCall, run_id: str, exc: Exception, raise_on_error: bool) -> str:
    if raise_on_error:
        raise ToolHandlerError(run_id, call.id, call.name, exc) from exc
    log.warning("tool handler %s failed on run %s", call.name, run_id, exc_info=exc)
    return _error_text(call, exc)


async def call_tool(
    tool: LocalTool, call: ToolCall, agent_id: str, run_id: str, *, raise_on_error: bool
) -> str:
    """The output to send for one call; a plain handler runs in a thread."""
    arguments = _arguments(tool, call)
    if isinstance(arguments, str):
        return arguments
    try:
        if inspect.iscoroutinefunction(tool.handler):
            result = await tool.handler(arguments, agent_id, run_id)
        else:
            result = await asyncio.to_thread(tool.handler, arguments, agent_id, run_id)
            if inspect.isawaitable(result):  # a callable object whose __call__ is async
                result = await result
        return output_text(result)
    except Exception as exc:
        return _failed(call, run_id, exc, raise_on_error)


def call_tool_blocking(
    tool: LocalTool, call: ToolCall, agent_id: str, run_id: str, *, raise_on_error: bool
) -> str:
    """`call_tool` for the sync client: an async handler gets an event loop of its own."""
    arguments = _arguments(tool, call)
    if isinstance(arguments, str):
        return arguments
    try:
        result = tool.handler(arguments, agent_id, run_id)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return output_text(result)
    except Exception as exc:
        return _failed(call, run_id, exc, raise_on_error)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def run_calls(
    calls: Sequence[ToolCall],
    tools: Mapping[str, LocalTool],
    agent_id: str,
    run_id: str,
    *,
    raise_on_error: bool,
    on_output: Callable[[ToolCall, str], Awaitable[None]] | None = None,
) -> list[tuple[ToolCall, str]]:
    """Run one turn's calls concurrently; `on_output` gets each output as soon as it is ready.

    With `raise_on_error`, a failed handler's `ToolHandlerError` is raised once every other
    call has finished (and been passed to `on_output`), so no finished work is lost.
    """
    require_handlers(run_id, calls, tools)

    async def one(call: ToolCall) -> tuple[ToolCall, str]:
        output = await call_tool(
            tools[call.name], call, agent_id, run_id, raise_on_error=raise_on_error
        )
        if on_output is not None:
            await on_output(call, output)
        return call, output

    outcomes = await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]


def run_calls_blocking(
    calls: Sequence[ToolCall],
    tools: Mapping[str, LocalTool],
    agent_id: str,
    run_id: str,
    *,
    raise_on_error: bool,
) -> Iterator[tuple[ToolCall, str]]:
    """`run_calls` for the sync client: yields (call, output) as each handler finishes."""
    require_handlers(run_id, calls, tools)
    if not calls:
        return
    failure: ToolHandlerError | None = None
    with ThreadPoolExecutor(max_workers=min(len(calls), MAX_HANDLER_THREADS)) as pool:
        futures: dict[Future[str], ToolCall] = {
            pool.submit(
                call_tool_blocking,
                tools[call.name],
                call,
                agent_id,
                run_id,
                raise_on_error=raise_on_error,
            ): call
            for call in calls
        }
        for future in as_completed(futures):
            try:
                output = future.result()
            except ToolHandlerError as exc:
                failure = failure or exc
                continue
            yield futures[future], output
    if failure is not None:
        raise failure


def tool_responses(results: ToolResults) -> list[dict[str, str]]:
    """`{"tool_call_id", "output"}` items from a mapping of id → output or a list of items."""
    if isinstance(results, Mapping):
        pairs = list(results.items())
    else:
        pairs = []
        for item in results:
            if not isinstance(item, Mapping) or "tool_call_id" not in item:
                raise TypeError("each tool response needs a tool_call_id and an output")
            pairs.append((item["tool_call_id"], item.get("output", "")))
    return [{"tool_call_id": str(call_id), "output": output_text(out)} for call_id, out in pairs]
