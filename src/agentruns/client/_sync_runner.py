"""`AgentRunsClient.run_agent`: the blocking twin of `_async_runner`, with the same rules."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import closing
from typing import TYPE_CHECKING, TypeVar

from ._base import JSONObject, path
from ._events import Deadline, RunEvent, run_outcome
from ._runner import (
    ANSWER_REFUSED,
    RETRYABLE_REQUEST,
    CallLedger,
    RequestRetry,
    RunInputs,
    answered_elsewhere,
)
from ._tools import LocalTool, ToolCall, run_calls_blocking

if TYPE_CHECKING:
    from ._sync import AgentRunsClient

__all__ = ["EventCallback", "SyncAgentRunner"]

T = TypeVar("T")
# Called with every event of the run, in order, once each.
EventCallback = Callable[[RunEvent], None]


class SyncAgentRunner:
    """One blocking `run_agent` call; handlers of a turn run in parallel threads."""

    def __init__(
        self,
        client: AgentRunsClient,
        tools: Mapping[str, LocalTool],
        *,
        raise_on_tool_error: bool = False,
        on_event: EventCallback | None = None,
        timeout: float | None = None,
    ) -> None:
        self.client = client
        self.tools = tools
        self.raise_on_tool_error = raise_on_tool_error
        self.on_event = on_event
        self.timeout = timeout
        self.deadline: Deadline | None = None
        self.ledger = CallLedger()

    def start(
        self, agent_id: str, inputs: RunInputs, *, idempotency_key: str | None = None
    ) -> JSONObject:
        """Create the run; retried safely because the key makes the server create it once."""
        agent = None
        if inputs.needs_agent():
            agent = self._retrying(lambda: self.client.agents.get(agent_id))
            version = inputs.agent_version(agent)
            if version is not None:
                agent = self._retrying(lambda: self.client.agents.get(agent_id, version=version))
        fields = inputs.create_fields(agent)
        key = idempotency_key or f"sdk-{uuid.uuid4()}"
        return self._retrying(
            lambda: self.client.runs.create(agent_id, idempotency_key=key, **fields)
        )

    def execute(self, run_id: str) -> JSONObject:
        """Follow the run to its end, answering its client-side tool calls on the way."""
        if self.timeout is not None:
            self.deadline = Deadline.start(run_id, self.timeout)
        self._answer(self._get(run_id))
        final = None
        stream = self.client.runs._stream(run_id, None, follow=True, deadline=self.deadline)
        with closing(stream) as events:
            for event in events:
                if self.on_event is not None:
                    self.on_event(event)
                if event.type == "tool_calls.required" and self.ledger.is_news(event):
                    self._answer(self._get(run_id))
                if event.is_terminal:
                    final = event.data
                if self.deadline is not None:
                    self.deadline.check()
        return run_outcome(final if final is not None else self._get(run_id))

    def _answer(self, run: JSONObject) -> None:
        calls = self.ledger.take(run)
        run_id, agent_id = str(run["id"]), str(run.get("agent_id"))
        # Each output is posted as soon as its handler returns (see `_async_runner._post`).
        for call, output in run_calls_blocking(
            calls, self.tools, agent_id, run_id, raise_on_error=self.raise_on_tool_error
        ):
            self._post(run_id, call, output)

    def _post(self, run_id: str, call: ToolCall, output: str) -> None:
        body = {"tool_responses": [{"tool_call_id": call.id, "output": output}]}
        url = path("agent-runs", run_id, "tool-responses")
        try:
            self._retrying(lambda: self.client._request("POST", url, json=body))
        except ANSWER_REFUSED:
            if not answered_elsewhere(self._get(run_id), call.id):
                raise

    def _get(self, run_id: str) -> JSONObject:
        return self._retrying(lambda: self.client.runs.get(run_id))

    def _retrying(self, request: Callable[[], T]) -> T:
        retry = RequestRetry(self.client.reconnect)
        while True:
            try:
                return request()
            except RETRYABLE_REQUEST as exc:
                delay = retry.delay(exc)
                if self.deadline is not None:
                    self.deadline.check()
                    delay = min(delay, self.deadline.remaining())
                time.sleep(delay)
