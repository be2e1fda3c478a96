"""`AgentRunsClient.run_agent`: the blocking twin of `_async_runner`, with the same rules."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
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
from ._events import Deadline, RunEvent, run_outcome
from ._runner import (
    ANSWER_REFUSED,
    RETRYABLE_REQUEST,
    CallLedger,
    RequestRetry,
    RunInputs,
    answered_elsewhere,
)
from ._tools import LocalTool, ToolCall, require_handlers, run_calls_blocking

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
        self.claimant = new_claimant()
        self.lease_s = client.claim_lease_s

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
        """Answer what the run waits for; calls another process holds are tried again until
        they are answered (see `_async_runner._answer`)."""
        held = self.ledger.fresh(run)
        backoff = HeldBackoff()
        while held:
            _outputs, held = self.answer_turn(run, held)
            if held:
                self._sleep(backoff.delay())

    def answer_turn(
        self, run: JSONObject, calls: Sequence[ToolCall]
    ) -> tuple[list[tuple[ToolCall, str]], list[ToolCall]]:
        """Claim `calls`, run and answer those claimed; (the outputs, the calls held by another).

        Each output is posted as soon as its handler returns (see `_async_runner._post`).
        """
        run_id, agent_id = str(run["id"]), str(run.get("agent_id"))
        require_handlers(run_id, calls, self.tools)  # before any claim, as in the async runner
        mine, held = self._claim(run_id, calls)
        if not mine:
            return [], held
        running = {call.id for call in mine}
        outputs: list[tuple[ToolCall, str]] = []
        try:
            with self._renewing(run_id, running):
                for call, output in run_calls_blocking(
                    mine, self.tools, agent_id, run_id, raise_on_error=self.raise_on_tool_error
                ):
                    self._post(run_id, call, output)
                    running.discard(call.id)
                    outputs.append((call, output))
        except Exception:
            # A handler raised: free its call, once no renewal can take it back.
            self._release(run_id, running)
            raise
        order = {call.id: i for i, call in enumerate(mine)}
        return sorted(outputs, key=lambda item: order[item[0].id]), held

    def _claim(
        self, run_id: str, calls: Sequence[ToolCall]
    ) -> tuple[list[ToolCall], list[ToolCall]]:
        """(the calls claimed, the calls another claimant holds); the rest need nobody."""
        mine: list[ToolCall] = []
        held: list[ToolCall] = []
        for call in calls:
            # Safe to send again: a re-claim by the same claimant only moves its lease.
            url, body = claim_request(run_id, call.id, self.claimant, self.lease_s)
            try:
                self._retrying(partial(self.client._request, "POST", url, json=body))
            except CLAIM_REFUSED as exc:
                if held_by_another(exc):
                    held.append(call)
                    continue
            else:
                mine.append(call)
            self.ledger.take(call)
        return mine, held

    @contextlib.contextmanager
    def _renewing(self, run_id: str, running: set[str]) -> Iterator[None]:
        """Keep the claims on `running` (the calls not answered yet) from a thread."""
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(run_id, running, stop), name="agentruns-claims", daemon=True
        )
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()

    def _renew(self, run_id: str, running: set[str], stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 3):
            # `sorted` copies the set in one step, so the caller's discards can't break it.
            for call_id in sorted(running):
                url, body = claim_request(run_id, call_id, self.claimant, self.lease_s)
                try:
                    self.client._request("POST", url, json=body)
                except Exception as exc:  # best effort: the next renewal may get through
                    log_renewal_failure(run_id, call_id, exc)

    def _release(self, run_id: str, running: set[str]) -> None:
        """Cut the claims on calls left unanswered down to the shortest lease."""
        for call_id in sorted(running):
            url, body = claim_request(run_id, call_id, self.claimant, RELEASE_LEASE_S)
            with contextlib.suppress(Exception):
                self.client._request("POST", url, json=body)

    def _sleep(self, seconds: float) -> None:
        if self.deadline is not None:
            self.deadline.check()
            seconds = min(seconds, self.deadline.remaining())
        time.sleep(seconds)

    def _post(self, run_id: str, call: ToolCall, output: str) -> None:
        body = {"tool_responses": [{"tool_call_id": call.id, "output": output}]}
        url = path("agent-runs", run_id, "tool-responses")
        try:
            self._retrying(partial(self.client._request, "POST", url, json=body))
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
                self._sleep(retry.delay(exc))
