"""`AsyncAgentRunsClient.run_agent`: start or re-attach to a run, answer its tools, return it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from ._base import JSONObject, path
from ._claims import (
    CLAIM_REFUSED,
    RELEASE_LEASE_S,
    HeldBackoff,
    claim_request,
    held_by_another,
    log_renewal_failure,
    new_claimant,
)
from ._events import RunEvent, run_outcome
from ._runner import (
    ANSWER_REFUSED,
    RETRYABLE_REQUEST,
    CallLedger,
    RequestRetry,
    RunInputs,
    answered_elsewhere,
)
from ._tools import LocalTool, ToolCall, require_handlers, run_calls
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
        self.claimant = new_claimant()
        self.lease_s = client.claim_lease_s

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
        """Answer what the run waits for; calls another process holds are tried again until
        they are answered (a process that died leaves its calls to us once its lease ends)."""
        held = self.ledger.fresh(run)
        backoff = HeldBackoff()
        while held:
            _outputs, held = await self.answer_turn(run, held)
            if held:
                await asyncio.sleep(backoff.delay())

    async def answer_turn(
        self, run: JSONObject, calls: Sequence[ToolCall]
    ) -> tuple[list[tuple[ToolCall, str]], list[ToolCall]]:
        """Claim `calls`, run and answer those claimed; (the outputs, the calls held by another)."""
        run_id, agent_id = str(run["id"]), str(run.get("agent_id"))
        # Before any claim: a call with no handler must leave the turn unclaimed for whoever
        # re-attaches with the handler.
        require_handlers(run_id, calls, self.tools)
        mine, held = await self._claim(run_id, calls)
        if not mine:
            return [], held
        running = {call.id for call in mine}

        async def answer(call: ToolCall, output: str) -> None:
            await self._post(run_id, call, output)
            running.discard(call.id)

        try:
            async with self._renewing(run_id, running):
                outputs = await run_calls(
                    mine,
                    self.tools,
                    agent_id,
                    run_id,
                    raise_on_error=self.raise_on_tool_error,
                    on_output=answer,
                )
        except Exception:
            # A handler raised (`raise_on_tool_error`): its call is free for a re-attach.
            # Only now, with the renewals stopped, or one of them would take it back.
            await self._release(run_id, running)
            raise
        return outputs, held

    async def _claim(
        self, run_id: str, calls: Sequence[ToolCall]
    ) -> tuple[list[ToolCall], list[ToolCall]]:
        """(the calls claimed, the calls another claimant holds); the rest need nobody."""
        mine: list[ToolCall] = []
        held: list[ToolCall] = []
        for call in calls:
            # Safe to send again: a re-claim by the same claimant only moves its lease.
            url, body = claim_request(run_id, call.id, self.claimant, self.lease_s)
            try:
                await self._retrying(partial(self.client._request, "POST", url, json=body))
            except CLAIM_REFUSED as exc:
                if held_by_another(exc):
                    held.append(call)
                    continue
            else:
                mine.append(call)
            self.ledger.take(call)
        return mine, held

    @contextlib.asynccontextmanager
    async def _renewing(self, run_id: str, running: set[str]) -> AsyncIterator[None]:
        """Keep the claims on `running` (the calls not answered yet) while the body runs."""
        renewer = asyncio.create_task(self._renew(run_id, running))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew(self, run_id: str, running: set[str]) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            for call_id in sorted(running):
                url, body = claim_request(run_id, call_id, self.claimant, self.lease_s)
                try:
                    await self.client._request("POST", url, json=body)
                except Exception as exc:  # best effort: the next renewal may get through
                    log_renewal_failure(run_id, call_id, exc)

    async def _release(self, run_id: str, running: set[str]) -> None:
        """Cut the claims on calls left unanswered down to the shortest lease."""
        for call_id in sorted(running):
            url, body = claim_request(run_id, call_id, self.claimant, RELEASE_LEASE_S)
            with contextlib.suppress(Exception):
                await self.client._request("POST", url, json=body)

    async def _post(self, run_id: str, call: ToolCall, output: str) -> None:
        # One call per request, sent as soon as its handler returns: a process that dies
        # mid-turn loses only the calls still running, which a re-attached runner redoes.
        body = {"tool_responses": [{"tool_call_id": call.id, "output": output}]}
        url = path("agent-runs", run_id, "tool-responses")
        try:
            await self._retrying(partial(self.client._request, "POST", url, json=body))
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
