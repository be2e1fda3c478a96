"""`AsyncAgentRunsClient.run_agent`: start or re-attach to a run, answer its tools, return it."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, TypeVar

from ._base import JSONObject, path
from ._events import RunEvent, run_outcome
from ._runner import (
    ANSWER_REFUSED,
    RETRYABLE_REQUEST,
    CallLedger,
    RequestRetry,
    RunInputs,
    answered_elsewhere,
)
from ._tools import LocalTool, ToolCall, run_calls
from .errors import WaitTimeout

if TYPE_CHECKING:
    from ._async import AsyncAgentRunsClient

__all__ = ["AsyncAgentRunner", "AsyncEventCallback"]

T = TypeVar("T")
# Called with every event of the run, in order, once each; may be a coroutine function.
AsyncEventCallback = Callable[[RunEvent], "Awaitable[None] | None"]


class AsyncAgentRunner:
    """One `run_agent` call: its tools, its ledger of answered calls, its event callback."""

    def __init__(
        self,
        client: AsyncAgentRunsClient,
        tools: Mapping[str, LocalTool],
        *,
        raise_on_tool_error: bool = False,
        on_event: AsyncEventCallback | None = None,
        timeout: float | None = None,
    ) -> None:
        self.client = client
        self.tools = tools
        self.raise_on_tool_error = raise_on_tool_error
        self.on_event = on_event
        self.timeout = timeout
        self.ledger = CallLedger()

    async def start(
        self, agent_id: str, inputs: RunInputs, *, idempotency_key: str | None = None
    ) -> JSONObject:
        """Create the run; retried safely because the key makes the server create it once."""
        agent = None
        if inputs.needs_agent():
            agent = await self._retrying(lambda: self.client.agents.get(agent_id))
            version = inputs.agent_version(agent)
            if version is not None:
                agent = await self._retrying(
                    lambda: self.client.agents.get(agent_id, version=version)
                )
        fields = inputs.create_fields(agent)
        key = idempotency_key or f"sdk-{uuid.uuid4()}"
        return await self._retrying(
            lambda: self.client.runs.create(agent_id, idempotency_key=key, **fields)
        )

    async def execute(self, run_id: str) -> JSONObject:
        """Follow the run to its end, answering its client-side tool calls on the way.

        Raises `WaitTimeout` after `timeout` seconds; the run goes on and can be re-attached.
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await self._execute(run_id)
        except TimeoutError as exc:
            if self.timeout is None:
                raise
            raise WaitTimeout(run_id, self.timeout) from exc

    async def _execute(self, run_id: str) -> JSONObject:
        await self._answer(await self._get(run_id))
        final = None
        async with aclosing(self.client.runs._stream(run_id, None, follow=True)) as events:
            async for event in events:
                await self._emit(event)
                if event.type == "tool_calls.required" and self.ledger.is_news(event):
                    await self._answer(await self._get(run_id))
                if event.is_terminal:
                    final = event.data
        return run_outcome(final if final is not None else await self._get(run_id))

    async def _emit(self, event: RunEvent) -> None:
        if self.on_event is not None:
            result = self.on_event(event)
            if inspect.isawaitable(result):
                await result

    async def _answer(self, run: JSONObject) -> None:
        calls = self.ledger.take(run)
        if calls:
            await run_calls(
                calls,
                self.tools,
                str(run.get("agent_id")),
                str(run["id"]),
                raise_on_error=self.raise_on_tool_error,
                on_output=lambda call, output: self._post(str(run["id"]), call, output),
            )

    async def _post(self, run_id: str, call: ToolCall, output: str) -> None:
        # One call per request, sent as soon as its handler returns: a process that dies
        # mid-turn loses only the calls still running, which a re-attached runner redoes.
        body = {"tool_responses": [{"tool_call_id": call.id, "output": output}]}
        url = path("agent-runs", run_id, "tool-responses")
        try:
            await self._retrying(lambda: self.client._request("POST", url, json=body))
        except ANSWER_REFUSED:
            if not answered_elsewhere(await self._get(run_id), call.id):
                raise

    async def _get(self, run_id: str) -> JSONObject:
        return await self._retrying(lambda: self.client.runs.get(run_id))

    async def _retrying(self, request: Callable[[], Awaitable[T]]) -> T:
        retry = RequestRetry(self.client.reconnect)
        while True:
            try:
                return await request()
            except RETRYABLE_REQUEST as exc:
                await asyncio.sleep(retry.delay(exc))
