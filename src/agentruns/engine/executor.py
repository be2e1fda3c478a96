"""The agent loop: call the model, run tools, persist after every step.

A run is resumable at any point: everything the loop decides is derived from
the stored messages, so a worker that picks up a run another worker lost
continues from the last committed step (an unfinished model call is simply
made again; its partial deltas are marked discarded by the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from agentruns.deadlines import Deadlines
from agentruns.engine.models import resolve_model
from agentruns.engine.models.base import Model, TextDelta, ToolCall, Usage
from agentruns.engine.models.retrying import open_with_retries
from agentruns.engine.models.transport import ModelClient
from agentruns.engine.pacing import with_deadlines
from agentruns.engine.tools import (
    McpServerUnavailable,
    ToolRuntime,
    Toolset,
    ToolSource,
    build_toolset,
    inline_refs,
    tool_refs,
)
from agentruns.engine.tools.arguments import InvalidArguments, parse_arguments
from agentruns.engine.tools.bundles import DEFAULT_BUNDLE
from agentruns.errors import LeaseLost, ModelError, StoreError, ToolError
from agentruns.store import agents, bundles, events, tool_registry
from agentruns.store.clock import now
from agentruns.store.database import Database, WriteTurn
from agentruns.store.execution import commit_step
from agentruns.store.queue import Lease
from agentruns.store.transitions import status_events

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 20
DEFAULT_TOOL_RESPONSE_TIMEOUT_S = 24 * 3600
RELEASED = {"worker_id": None, "lease_token": None, "lease_until": None, "turn_deadline": None}
# A new run's usage, one object for all of them: usage is replaced at each step, never
# changed in place.
NO_USAGE: dict[str, Any] = {"requests": 0, "input_tokens": 0, "output_tokens": 0}


@dataclass(frozen=True, slots=True)
class RunStart:
    """What executing a claimed run starts from, taken from its row.

    Not the row itself: a run is held for as long as it executes, and the row (every
    column, the JSON ones decoded) weighs about 1.3 KB more, times thousands of runs.
    """

    agent_id: str
    agent_version: int
    project_id: str
    bundle: str
    results: list[Any]
    usage: dict[str, Any]
    turn_steps: int
    turn_deadline: float
    timeout_s: float
    tool_response_timeout_s: float | None
    # The conversation, read with the claim.
    messages: list[dict[str, Any]]
    # The rest of the run object, as the row has it until the worker changes the status:
    # the worker alone writes the run while it holds the lease (see `_current`). Empty
    # ones are None: thousands of runs may be waiting at once, and an empty dict is 64 B.
    vars: dict[str, Any] | None
    last_agent_message: str | None
    pending_tool_calls: list[Any] | None
    callback_url: str | None
    environment: str
    error: dict[str, Any] | None
    metadata: dict[str, Any] | None
    created_at: float
    started_at: float
    completed_at: float | None

    @classmethod
    def of(cls, row: Any, messages: list[dict[str, Any]]) -> RunStart:
        return cls(
            # Shared by the runs of one agent rather than one copy each.
            agent_id=sys.intern(row.agent_id),
            agent_version=row.agent_version,
            project_id=sys.intern(row.project_id),
            bundle=row.bundle and sys.intern(row.bundle),
            results=row.results,
            usage=NO_USAGE if row.usage == NO_USAGE else row.usage,
            turn_steps=row.turn_steps,
            turn_deadline=row.turn_deadline,
            timeout_s=row.timeout_s,
            tool_response_timeout_s=row.tool_response_timeout_s,
            messages=messages,
            vars=row.vars or None,
            last_agent_message=row.last_agent_message,
            pending_tool_calls=row.pending_tool_calls or None,
            callback_url=row.callback_url,
            environment=sys.intern(row.environment),
            error=row.error,
            metadata=row.metadata or None,
            created_at=row.created_at,
            started_at=row.started_at,
            completed_at=row.completed_at,
        )


@dataclass(slots=True)
class RunProgress:
    """The executing worker's copy of what it owns: it alone writes these fields.

    Slotted, and with nothing allocated for what is usually empty: thousands of runs may
    be waiting for their model at once, each holding one.
    """

    lease: Lease
    start: RunStart
    messages: list[dict[str, Any]]
    results: list[dict[str, Any]]
    usage: dict[str, int]
    turn_steps: int
    finished: bool = False
    pending_delta: list[str] = field(default_factory=list)
    # Server-side calls a lost worker started but never answered: their outcome is unknown.
    interrupted: frozenset[str] = frozenset()
    tool_response_timeout_s: float | None = None
    # The call whose `tool_call.started` went out with the message that asked for it.
    announced_call: str | None = None


@dataclass(slots=True)
class _Flushes:
    """When a model step's held-back deltas are due to be written (see engine/pacing.py).

    An object with a bound method, not a closure: the step's frame then holds no cells,
    and thousands of steps can be waiting for their model at once.
    """

    progress: RunProgress
    interval: float
    last: float

    def due(self) -> float | None:
        return self.last + self.interval if self.progress.pending_delta else None


@dataclass(frozen=True, slots=True)
class _ToolOutcome:
    output: str
    is_error: bool
    duration_ms: int | None = None  # server-side calls; a client's own calls are not timed


@dataclass(frozen=True, slots=True)
class _ToolAnswer:
    """What a tool call's output adds to the run: a result, an event, a message."""

    result: dict[str, Any]
    event: tuple[str, dict[str, Any]]
    message: dict[str, Any]

    @classmethod
    def of(cls, call: dict[str, Any], outcome: _ToolOutcome) -> _ToolAnswer:
        completed = {**call, "output": outcome.output, "is_error": outcome.is_error}
        result: dict[str, Any] = {
            "type": "tool_output",
            "tool_call_id": call["id"],
            "name": call["name"],
            "output": outcome.output,
        }
        if outcome.duration_ms is not None:
            completed["duration_ms"] = result["duration_ms"] = outcome.duration_ms
            result["is_error"] = outcome.is_error
        message = {
            "role": "tool",
            "tool_call_id": call["id"],
            "name": call["name"],
            "content": outcome.output,
        }
        return cls(result, ("tool_call.completed", completed), message)


def unanswered_tool_calls(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls of the last assistant message that have no tool message yet."""
    answered: set[str] = set()
    for message in reversed(history):
        if message["role"] == "tool":
            answered.add(message["tool_call_id"])
        elif message["role"] == "assistant":
            return [c for c in message.get("tool_calls") or [] if c["id"] not in answered]
        else:
            return []
    return []


class Executor:
    """Executes claimed runs. One per worker; holds no per-run state."""

    def __init__(
        self,
        db: Database,
        *,
        http: ModelClient,
        default_model: str,
        flush_interval_s: float = 0.005,
        tools: ToolRuntime | None = None,
    ) -> None:
        self.db = db
        self.http = http
        self.default_model = default_model
        self.flush_interval_s = flush_interval_s
        self.tools = tools or ToolRuntime()
        self.deadlines = Deadlines()  # the runs' timeouts, on one timer
        self._models: dict[tuple[Any, ...], Model] = {}

    async def aclose(self) -> None:
        """Stop what the tools hold across runs (MCP servers, the tools' HTTP client)."""
        await self.tools.aclose()

    async def execute(self, lease: Lease, start: RunStart) -> None:
        """Drive the run until it completes, fails, pauses, or the lease is lost."""
        progress = RunProgress(
            lease=lease,
            start=start,
            messages=start.messages,
            # Not copied: a step replaces them, never changes them in place.
            results=start.results,
            usage=start.usage,
            turn_steps=start.turn_steps,
            tool_response_timeout_s=start.tool_response_timeout_s,
        )
        try:
            spec = await agents.get_agent_spec(self.db, start.agent_id, start.agent_version)
            if spec is None:
                raise ToolError(f"agent {start.agent_id} version {start.agent_version} is gone")
            open_calls = unanswered_tool_calls(progress.messages)
            if open_calls:
                started = await events.tool_calls_started_since_last_message(self.db, lease.run_id)
                progress.interrupted = frozenset(c["id"] for c in open_calls if c["id"] in started)
            remaining = start.turn_deadline - now()
            if remaining <= 0:
                raise TimeoutError
            async with self.deadlines.at(asyncio.get_running_loop().time() + remaining):
                await self._loop(progress, spec, start.project_id, start.bundle)
        except LeaseLost:
            log.info("run %s: lease lost (cancelled or taken over)", lease.run_id)
        except StoreError:
            # A database blip is not the run's failure: the worker hands the run back.
            raise
        except TimeoutError:
            await self._fail(
                progress, "timeout", f"the run exceeded its timeout_s ({start.timeout_s:g} s)"
            )
        except ModelError as exc:
            await self._fail(progress, "model_error", exc.message)
        except McpServerUnavailable as exc:
            await self._fail(progress, "mcp_server_unavailable", str(exc))
        except ToolError as exc:
            await self._fail(progress, "agent_error", str(exc))
        except Exception as exc:
            log.exception("run %s: unexpected failure", lease.run_id)
            await self._fail(
                progress, "internal_error", f"internal error: {type(exc).__name__}: {exc}"
            )

    async def _tool_sources(
        self, project_id: str, spec: dict[str, Any], bundle: str | None
    ) -> list[ToolSource]:
        """The agent's own tools, then its bundle's (the agent's win on a name clash)."""
        specs = spec.get("tools") or []
        refs = tool_refs(specs)
        found = await tool_registry.find_tools(self.db, project_id, refs) if refs else {}
        try:
            sources = [ToolSource(inline_refs(specs, found))]
        except KeyError as exc:
            raise ToolError(f"the registered tool {exc} no longer exists") from exc
        if bundle == DEFAULT_BUNDLE:
            sources.append(ToolSource(self.tools.default_bundle, trusted=True))
        elif bundle is not None:
            stored = await bundles.get_bundle(self.db, project_id, bundle)
            if stored is None:
                raise ToolError(f"the bundle {bundle!r} no longer exists")
            sources.append(ToolSource(stored["tools"]))
        return sources

    async def _loop(
        self, progress: RunProgress, spec: dict[str, Any], project_id: str, bundle: str | None
    ) -> None:
        model = resolve_model(
            spec.get("model") or self.default_model,
            spec.get("model_settings") or {},
            client=self.http,
            cache=self._models,
        )
        sources = await self._tool_sources(project_id, spec, bundle)
        toolset = await build_toolset(sources, self.tools, project_id)
        max_steps = spec.get("max_steps") or DEFAULT_MAX_STEPS
        while not progress.finished:
            open_calls = unanswered_tool_calls(progress.messages)
            if open_calls:
                await self._handle_tool_calls(progress, toolset, open_calls, spec)
            elif progress.turn_steps >= max_steps:
                await self._fail(
                    progress,
                    "max_steps",
                    f"the run reached max_steps ({max_steps}) without an answer",
                )
            else:
                await self._model_step(progress, model, toolset, spec.get("model_settings") or {})

    async def _commit(
        self,
        progress: RunProgress,
        values: dict[str, Any] | None = None,
        events: list[Any] | None = None,
        new_messages: list[dict[str, Any]] | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Write a step, then update `progress` by `then`: both, even if cancelled meanwhile."""

        async def write(turn: WriteTurn) -> None:
            await commit_step(
                self.db,
                progress.lease,
                turn=turn,
                values=values,
                events=events or [],
                messages=new_messages or [],
                position=len(progress.messages),
                current=_current(progress) if values and "status" in values else None,
            )
            progress.messages.extend(new_messages or [])
            if then is not None:
                then()

        # In a burst, thousands of runs' writes queue for the database's connections: each
        # waits for its turn before its write (a task, its frames, its statement) exists.
        async with self.db.write_turn() as turn:
            await _uninterruptible(write(turn))

    async def _model_step(
        self, progress: RunProgress, model: Model, toolset: Toolset, settings: dict[str, Any]
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # The first event is awaited before the stream is wrapped, and before anything the
        # rest of the call needs is made: most of a call's life is spent waiting for it,
        # and thousands of calls may be waiting at once.
        first, stream = await open_with_retries(
            model, progress.messages, toolset.definitions, settings
        )
        text: list[str] = []
        calls: list[ToolCall] = []
        usage = Usage()
        flushes = _Flushes(progress, self.flush_interval_s, started)
        paced = with_deadlines(stream, flushes.due, first)
        async with contextlib.aclosing(paced) as stream_events:
            async for event in stream_events:
                if event is None:
                    # Deltas are due (the flush interval since the last write is up) and
                    # nothing more has arrived: they go now, together. So a delta is written
                    # at once unless the last write was less than the interval ago, and
                    # deltas that arrive together are written together, not one by one.
                    if progress.pending_delta:
                        await self._flush_delta(progress)
                        flushes.last = loop.time()
                elif isinstance(event, TextDelta):
                    text.append(event.text)
                    progress.pending_delta.append(event.text)
                elif isinstance(event, ToolCall):
                    calls.append(event)
                elif isinstance(event, Usage):
                    usage = event
        await self._commit_reply(progress, toolset, "".join(text), calls, usage)

    async def _commit_reply(
        self,
        progress: RunProgress,
        toolset: Toolset,
        content: str,
        calls: list[ToolCall],
        usage: Usage,
    ) -> None:
        """Write the model's reply, and the run's completion if it asked for no tool.

        A first call to a server-side tool that may safely run twice starts at once, and
        if it answers within the flush interval its output joins the reply's write: a quick
        tool then costs the run one write, not two. Had the worker died meanwhile, the run
        would ask the model again and call the tool again, which such a tool allows.
        """
        tool_calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls]
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        events: list[Any] = []
        if progress.pending_delta:
            events.append(("message.delta", {"delta": "".join(progress.pending_delta)}))
        events.append(("message.completed", message))
        # The first call is about to run if it is a server-side one: saying so in this
        # commit spares the run a write of its own just before the call.
        announced = None
        early: asyncio.Task[_ToolOutcome] | None = None
        if tool_calls and not toolset.is_client_tool(tool_calls[0]["name"]):
            announced = tool_calls[0]
            events.append(("tool_call.started", announced))
            if self._may_start_early(toolset, announced):
                early = asyncio.ensure_future(self._timed_call(toolset, announced))
        results = list(progress.results)
        if content:
            results.append({"type": "message", "role": "assistant", "content": content})
        results.extend({"type": "tool_call", **call} for call in tool_calls)
        usage_total = {
            "requests": progress.usage.get("requests", 0) + 1,
            "input_tokens": progress.usage.get("input_tokens", 0) + usage.input_tokens,
            "output_tokens": progress.usage.get("output_tokens", 0) + usage.output_tokens,
        }
        values: dict[str, Any] = {
            "results": results,
            "usage": usage_total,
            "turn_steps": progress.turn_steps + 1,
        }
        if not tool_calls:
            values.update(
                RELEASED, status="completed", last_agent_message=content, completed_at=now()
            )
            events.extend(status_events("completed"))
        messages = [message]

        def committed() -> None:
            progress.pending_delta.clear()
            progress.results, progress.usage = values["results"], usage_total
            progress.turn_steps += 1
            progress.finished = not tool_calls
            progress.announced_call = None if announced is None else announced["id"]

        try:
            if early is not None:
                await asyncio.wait((early,), timeout=self.flush_interval_s)
                if early.done():
                    assert announced is not None
                    answer = _ToolAnswer.of(announced, early.result())
                    values["results"] = [*results, answer.result]
                    events.append(answer.event)
                    messages.append(answer.message)
                    announced = None  # answered, not just announced
            await self._commit(progress, values, events, messages, then=committed)
            if early is not None and announced is not None:  # not answered with the reply
                # (It may have finished during the reply's write: its output is still due.)
                answer = _ToolAnswer.of(announced, await early)
                progress.announced_call = None
                await self._commit_tool_answer(progress, answer)
        finally:
            if early is not None and not early.done():
                early.cancel()
                await asyncio.wait((early,))  # the tool's own cleanup ends with the run's

    async def _flush_delta(self, progress: RunProgress) -> None:
        delta = "".join(progress.pending_delta)
        await self._commit(
            progress,
            events=[("message.delta", {"delta": delta})],
            then=progress.pending_delta.clear,
        )

    async def _handle_tool_calls(
        self,
        progress: RunProgress,
        toolset: Toolset,
        open_calls: list[dict[str, Any]],
        spec: dict[str, Any],
    ) -> None:
        client_calls = []
        for call in open_calls:
            if progress.finished:
                return
            definition = toolset.client.get(call["name"])
            if definition is None:
                await self._run_server_tool(progress, toolset, call)
                continue
            try:
                parse_arguments(call["name"], call["arguments"], definition.parameters)
            except InvalidArguments as exc:
                # Never sent to the client: the model is asked to call again.
                refused = _ToolOutcome(str(exc), is_error=True)  # not timed: not run here
                await self._commit_tool_answer(progress, _ToolAnswer.of(call, refused))
            else:
                client_calls.append(call)
        if client_calls and not progress.finished:
            await self._pause_for_client_tools(progress, client_calls, spec)

    async def _run_server_tool(
        self, progress: RunProgress, toolset: Toolset, call: dict[str, Any]
    ) -> None:
        if call["id"] in progress.interrupted:
            progress.interrupted -= {call["id"]}
            tool = toolset.server.get(call["name"])
            if tool is None or not tool.idempotent:
                # Running it again could repeat a side effect (a payment, an email): the
                # caller decides, knowing which call it was.
                await self._fail(
                    progress,
                    "tool_outcome_unknown",
                    f"the server-side tool call {call['id']} ({call['name']}) was interrupted "
                    "when its worker stopped, so its outcome is unknown; the tool is not "
                    "marked idempotent, so it was not called again",
                )
                return
            log.info("run %s: calling %s again after a crash", progress.lease.run_id, call["id"])
        if progress.announced_call == call["id"]:
            progress.announced_call = None
        else:
            await self._commit(progress, events=[("tool_call.started", call)])
        answer = _ToolAnswer.of(call, await self._timed_call(toolset, call))
        await self._commit_tool_answer(progress, answer)

    def _may_start_early(self, toolset: Toolset, call: dict[str, Any]) -> bool:
        """Whether `call` may run before the write that announces it (see `_commit_reply`)."""
        tool = toolset.server.get(call["name"])
        # No such tool: the call only gets an error back, which has no side effect.
        return self.flush_interval_s > 0 and (tool is None or tool.idempotent)

    async def _timed_call(self, toolset: Toolset, call: dict[str, Any]) -> _ToolOutcome:
        loop = asyncio.get_running_loop()
        started = loop.time()
        output, is_error = await self._call_tool(toolset, call)
        return _ToolOutcome(output, is_error, round((loop.time() - started) * 1000))

    async def _commit_tool_answer(self, progress: RunProgress, answer: _ToolAnswer) -> None:
        results = [*progress.results, answer.result]

        def committed() -> None:
            progress.results = results

        await self._commit(
            progress, {"results": results}, [answer.event], [answer.message], then=committed
        )

    async def _call_tool(self, toolset: Toolset, call: dict[str, Any]) -> tuple[str, bool]:
        """The output for the model and whether it is an error; never raises for the tool."""
        name = call["name"]
        tool = toolset.server.get(name)
        if tool is None:
            return f"error: there is no tool named {name!r}", True
        try:
            arguments = parse_arguments(name, call["arguments"], tool.definition.parameters)
        except InvalidArguments as exc:
            return str(exc), True
        try:
            async with asyncio.timeout(tool.timeout_s):
                output = await tool.call(arguments)
        except TimeoutError:
            return f"error: tool {name} did not finish within {tool.timeout_s:g} s", True
        except ToolError as exc:
            return self._cut(f"error: {exc}"), True
        except Exception as exc:
            log.warning("tool %s failed", name, exc_info=True)
            return self._cut(f"error: tool {name} failed: {type(exc).__name__}: {exc}"), True
        if not isinstance(output, str):
            return f"error: tool {name} returned {type(output).__name__}, not text", True
        return self._cut(output), False

    def _cut(self, output: str) -> str:
        """Bound what one tool call adds to the conversation (and to every later model call)."""
        limit = self.tools.limits.output_max_chars
        if len(output) <= limit:
            return output
        return output[:limit] + f"\n[truncated: the output was {len(output)} characters]"

    async def _pause_for_client_tools(
        self, progress: RunProgress, calls: list[dict[str, Any]], spec: dict[str, Any]
    ) -> None:
        timeout_s = (
            progress.tool_response_timeout_s
            or spec.get("tool_response_timeout_s")
            or DEFAULT_TOOL_RESPONSE_TIMEOUT_S
        )
        await self._commit(
            progress,
            {
                **RELEASED,
                "status": "awaiting_tool_calls",
                "pending_tool_calls": calls,
                "tool_response_deadline": now() + timeout_s,
            },
            [("tool_calls.required", {"tool_calls": calls}), *status_events("awaiting_tool_calls")],
        )
        progress.finished = True

    async def _fail(self, progress: RunProgress, kind: str, message: str) -> None:
        error = {"type": kind, "message": message}
        results = [*progress.results, {"type": "error", "error": error}]
        events: list[Any] = []
        if progress.pending_delta:
            events.append(("message.delta", {"delta": "".join(progress.pending_delta)}))
        try:
            await self._commit(
                progress,
                {
                    **RELEASED,
                    "status": "failed",
                    "error": error,
                    "results": results,
                    "completed_at": now(),
                },
                [*events, *status_events("failed")],
            )
        except LeaseLost:
            log.info("run %s: lease lost before recording failure %s", progress.lease.run_id, kind)
        progress.finished = True


def _current(progress: RunProgress) -> dict[str, Any]:
    """The run object's columns as the run's row has them now.

    The executing worker knows them: it alone writes the run while it holds the lease, and
    anyone else's change (a cancellation, a lease taken over) moves the row out of the fence
    its writes match on, so that a write rendered from a stale copy is never applied.
    """
    start = progress.start
    return {
        "id": progress.lease.run_id,
        "project_id": start.project_id,
        "agent_id": start.agent_id,
        "agent_version": start.agent_version,
        "status": "in_progress",
        "vars": start.vars or {},
        "results": progress.results,
        "last_agent_message": start.last_agent_message,
        "pending_tool_calls": start.pending_tool_calls or [],
        "callback_url": start.callback_url,
        "bundle": start.bundle,
        "environment": start.environment,
        "usage": progress.usage,
        "error": start.error,
        "metadata": start.metadata or {},
        "created_at": start.created_at,
        "started_at": start.started_at,
        "completed_at": start.completed_at,
    }


async def _uninterruptible(write: Coroutine[Any, Any, None]) -> None:
    """Await `write` to its end even if the caller is cancelled meanwhile, then re-raise.

    A cancellation (the run's `timeout_s`, a shutdown) that struck inside a write
    could not stop the commit itself (the SQLite driver runs in a thread), but it
    skipped the in-memory bookkeeping after it: the failure then recorded stale
    `results` and re-sent text already streamed. So writes finish first.
    """
    task = asyncio.ensure_future(write)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)  # unlike `await task`, cancelling this spares the task
        except asyncio.CancelledError:
            # Even if the write has finished by now: the cancellation is the caller's to see
            # (swallowed, a run's deadline would never fire).
            cancelled = True
        except Exception:
            pass  # the write failed: raised below
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller must see
        raise asyncio.CancelledError
    task.result()
