"""The asynchronous client: the same API as `AgentRunsClient`, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from ._async_runner import AsyncAgentRunner, AsyncEventCallback
from ._base import (
    DEFAULT_CLAIM_LEASE_S,
    BaseClient,
    JSONObject,
    Pager,
    path,
    run_create_request,
    tool_registration_body,
)
from ._events import (
    RETRY,
    RETRYABLE,
    STOP,
    TERMINAL_STATUSES,
    ReconnectPolicy,
    RunEvent,
    StreamCursor,
    next_step,
    run_outcome,
)
from ._runner import RunInputs
from ._tools import ToolResults, ToolsMap, tool_responses
from ._webhooks import aprocess_webhook_tools, paused_run
from .errors import APIConnectionError, WaitTimeout

__all__ = ["AsyncAgentRunsClient", "AsyncAgents", "AsyncRuns", "AsyncTools"]


class AsyncAgentRunsClient(BaseClient):
    """Asynchronous client of an agentruns server; see `AgentRunsClient` for the settings."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect: ReconnectPolicy | None = None,
        claim_lease_s: float = DEFAULT_CLAIM_LEASE_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout=timeout, reconnect=reconnect, claim_lease_s=claim_lease_s
        )
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())
        self.agents = AsyncAgents(self)
        self.runs = AsyncRuns(self)
        self.tools = AsyncTools(self)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAgentRunsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- running agents with client-side tools (the Sudoiq-style API) ----------------------

    async def run_agent(
        self,
        agent_id: str | None = None,
        *,
        string_inputs: Mapping[str, Any] | None = None,
        vars: Mapping[str, Any] | None = None,
        message: str | None = None,
        environment: str | None = None,
        bundle: str | None = None,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        response_timeout: float | None = None,
        resume_run_id: str | None = None,
        tools: ToolsMap | None = None,
        raise_on_tool_error: bool = False,
        on_event: AsyncEventCallback | None = None,
    ) -> str:
        """Run the agent to the end, answering its client-side tools; its final text.

        The same as `execute_agent`, which returns the whole run; this returns only
        `last_agent_message` ("" when the agent said nothing).
        """
        run = await self.execute_agent(
            agent_id,
            string_inputs=string_inputs,
            vars=vars,
            message=message,
            environment=environment,
            bundle=bundle,
            callback_url=callback_url,
            metadata=metadata,
            response_timeout=response_timeout,
            resume_run_id=resume_run_id,
            tools=tools,
            raise_on_tool_error=raise_on_tool_error,
            on_event=on_event,
        )
        return str(run.get("last_agent_message") or "")

    async def execute_agent(
        self,
        agent_id: str | None = None,
        *,
        string_inputs: Mapping[str, Any] | None = None,
        vars: Mapping[str, Any] | None = None,
        message: str | None = None,
        environment: str | None = None,
        bundle: str | None = None,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        response_timeout: float | None = None,
        resume_run_id: str | None = None,
        tools: ToolsMap | None = None,
        raise_on_tool_error: bool = False,
        on_event: AsyncEventCallback | None = None,
    ) -> JSONObject:
        """Start a run (or re-attach to `resume_run_id`), follow its events, run the handlers
        of its client-side tool calls, and return the completed run.

        `string_inputs` are template vars; when the agent has no `prompt` and no `message`
        is given, their values joined by newlines are the user message. `vars` win over
        them. `on_event` sees every event once, in order. A dropped stream is resumed. A
        handler that raises answers with an error text the model reads, unless
        `raise_on_tool_error`. Raises `RunFailed` / `RunCancelled`, `MissingToolHandler`
        (the run stays paused), and `WaitTimeout` after `response_timeout` seconds (the
        run goes on; re-attach with `resume_run_id`).
        """
        runner = AsyncAgentRunner(
            self,
            self._tools_for(tools),
            raise_on_tool_error=raise_on_tool_error,
            on_event=on_event,
            timeout=response_timeout,
        )
        if resume_run_id is None:
            if agent_id is None:
                raise TypeError("execute_agent needs agent_id, or resume_run_id to re-attach")
            inputs = RunInputs(
                string_inputs, vars, message, environment, bundle, callback_url, metadata
            )
            resume_run_id = str((await runner.start(agent_id, inputs))["id"])
        return await runner.execute(resume_run_id)

    async def start_agent_run(
        self,
        agent_id: str,
        *,
        string_inputs: Mapping[str, Any] | None = None,
        vars: Mapping[str, Any] | None = None,
        message: str | None = None,
        environment: str | None = None,
        bundle: str | None = None,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """Start a run and return it at once (`queued`); inputs as for `execute_agent`.

        For webhook-driven integrations: pass `callback_url`, then answer tool calls with
        `process_webhook_tools` and `send_tool_responses`.
        """
        inputs = RunInputs(
            string_inputs, vars, message, environment, bundle, callback_url, metadata
        )
        runner = AsyncAgentRunner(self, {})
        return await runner.start(agent_id, inputs, idempotency_key=idempotency_key)

    async def send_tool_responses(
        self, agent_id: str | None, task_id: str, results: ToolResults
    ) -> JSONObject:
        """Post tool outputs for the run `task_id`; returns the run.

        `results` is `{tool_call_id: output}` or `[{"tool_call_id", "output"}, ...]`
        (non-string outputs are sent as JSON text). `agent_id` is accepted for
        compatibility; the run id alone names the run.
        """
        body = {"tool_responses": tool_responses(results)}
        return await self._request("POST", path("agent-runs", task_id, "tool-responses"), json=body)

    async def process_webhook_tools(
        self,
        payload: Mapping[str, Any] | str | bytes,
        tools_map: ToolsMap | None = None,
        *,
        post: bool = False,
        raise_on_tool_error: bool = False,
    ) -> list[dict[str, str]]:
        """Answer a `run.awaiting_tool_calls` webhook: run the handlers (`tools_map`, else
        those of `set_tools`) and return the responses for `send_tool_responses`.

        With `post`, the run's current `pending_tool_calls` are read first and each call is
        claimed on the server before its handler runs, so a delivery that comes again
        (webhooks retry), even while the first one is still running, or another process
        attached to the run, runs no handler twice; the outputs are posted as each handler
        returns, and only the calls run here are returned.
        """
        tools = self._tools_for(tools_map) if tools_map is not None else self._local_tools
        run = paused_run(payload)
        if run is None:
            return []
        if not post:
            return await aprocess_webhook_tools(run, tools, raise_on_tool_error=raise_on_tool_error)
        runner = AsyncAgentRunner(self, tools, raise_on_tool_error=raise_on_tool_error)
        run = await runner._get(str(run["id"]))
        outputs, _held = await runner.answer_turn(run, runner.ledger.fresh(run))
        return tool_responses({call.id: output for call, output in outputs})

    async def _send(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The decoded body of the response; raises the typed error of an error response."""
        try:
            response = await self._http.request(
                method, url, json=json, params=params, headers=headers
            )
        except httpx.TransportError as exc:
            raise self._connection_error(exc, url) from exc
        return self._body(response)

    async def _request(self, method: str, url: str, **kwargs: Any) -> JSONObject:
        data: JSONObject = self._data(await self._send(method, url, **kwargs))
        return data

    async def _paginate(
        self, url: str, params: Mapping[str, Any], limit: int | None
    ) -> AsyncIterator[Any]:
        pager = Pager(params, limit)
        while not pager.done:
            for item in pager.take(await self._send("GET", url, params=pager.next_params())):
                yield item


class AsyncAgents:
    """`client.agents`: agent definitions (Toolhouse calls them chats)."""

    def __init__(self, client: AsyncAgentRunsClient) -> None:
        self._client = client

    async def create(self, **fields: Any) -> JSONObject:
        return await self._client._request("POST", path("agents"), json=fields)

    async def get(self, agent_id: str, *, version: int | None = None) -> JSONObject:
        """The agent as it is now, or one of its earlier versions."""
        params = {"version": version} if version is not None else None
        return await self._client._request("GET", path("agents", agent_id), params=params)

    def list(self, *, limit: int | None = None) -> AsyncIterator[JSONObject]:
        """Every agent, page after page (`async for`); `limit` caps how many in all."""
        return self._client._paginate(path("agents"), {}, limit)

    async def update(self, agent_id: str, **fields: Any) -> JSONObject:
        return await self._client._request("PATCH", path("agents", agent_id), json=fields)

    async def delete(self, agent_id: str) -> None:
        await self._client._send("DELETE", path("agents", agent_id))

    async def publish(self, agent_id: str) -> JSONObject:
        return await self._client._request("POST", path("agents", agent_id, "publish"))


class AsyncRuns:
    """`client.runs`: agent runs, their events, and waiting for them."""

    def __init__(self, client: AsyncAgentRunsClient) -> None:
        self._client = client

    async def create(
        self,
        agent_id: str,
        vars: Mapping[str, Any] | None = None,
        *,
        message: str | None = None,
        callback_url: str | None = None,
        bundle: str | None = None,
        environment: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """Queue a run of the agent; the run comes back with status `queued`."""
        body, headers = run_create_request(
            agent_id,
            vars=vars,
            message=message,
            callback_url=callback_url,
            bundle=bundle,
            environment=environment,
            metadata=metadata,
            idempotency_key=idempotency_key,
        )
        return await self._client._request("POST", path("agent-runs"), json=body, headers=headers)

    async def get(self, run_id: str) -> JSONObject:
        return await self._client._request("GET", path("agent-runs", run_id))

    def list(
        self,
        *,
        status: str | None = None,
        agent_id: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[JSONObject]:
        """Runs, newest first, page after page (`async for`); `limit` caps how many in all."""
        params = {"status": status, "agent_id": agent_id}
        return self._client._paginate(path("agent-runs"), params, limit)

    async def continue_(self, run_id: str, message: str) -> JSONObject:
        """Add a user message to a completed run; it is queued again with its whole context."""
        return await self._client._request(
            "PUT", path("agent-runs", run_id), json={"message": message}
        )

    async def cancel(self, run_id: str) -> JSONObject:
        return await self._client._request("POST", path("agent-runs", run_id, "cancel"))

    def events(self, run_id: str, *, after: int | None = None) -> AsyncIterator[RunEvent]:
        """The run's events after `after`, live, until the first terminal event.

        A dropped connection is resumed with `Last-Event-ID`: nothing is missed or repeated.
        """
        return self._stream(run_id, after, follow=False)

    def follow(self, run_id: str, *, after: int | None = None) -> AsyncIterator[RunEvent]:
        """Like `events`, but reads past terminal events the run has left behind (it was
        continued since) and stops only when the run is finished now."""
        return self._stream(run_id, after, follow=True)

    # `timeout` mirrors the sync client; it is applied with asyncio.timeout inside.
    async def wait(self, run_id: str, *, timeout: float | None = None) -> JSONObject:  # noqa: ASYNC109
        """The run once finished: returned if completed, else `RunFailed` / `RunCancelled`.

        Raises `WaitTimeout` after `timeout` seconds; the run goes on regardless.
        """
        try:
            async with asyncio.timeout(timeout):
                run = await self.get(run_id)
                if run["status"] not in TERMINAL_STATUSES:
                    async with aclosing(self._stream(run_id, None, follow=True)) as events:
                        async for event in events:
                            if event.is_terminal:
                                run = event.data
        except TimeoutError as exc:
            if timeout is None:
                raise
            raise WaitTimeout(run_id, timeout) from exc
        return run_outcome(run)

    async def _stream(
        self, run_id: str, after: int | None, *, follow: bool
    ) -> AsyncGenerator[RunEvent, None]:
        client = self._client
        url = path("agent-runs", run_id, "events")
        cursor = StreamCursor(run_id, after, client.reconnect)
        while True:
            terminal = None
            try:
                async with aconnect_sse(
                    client._http,
                    "GET",
                    url,
                    headers=cursor.headers(),
                    timeout=client._stream_timeout(),
                ) as source:
                    if source.response.is_error:
                        await source.response.aread()
                        client._raise_for_status(source.response)
                    cursor.opened()
                    async for sse in source.aiter_sse():
                        event = cursor.accept(sse)
                        if event is None:
                            continue
                        yield event
                        if event.is_terminal:
                            terminal = event
                            break
                run = await self.get(run_id) if terminal is None or follow else None
            except RETRYABLE as exc:
                await asyncio.sleep(cursor.backoff(exc))
                continue
            except SSEError as exc:
                raise APIConnectionError(f"{url} did not answer with an event stream") from exc
            step = next_step(terminal, run)
            if step == STOP:
                return
            if step == RETRY:
                ended = APIConnectionError("the event stream ended before the run did")
                await asyncio.sleep(cursor.backoff(ended))


class AsyncTools:
    """`client.tools`: the project's tool registry (agents use `{"type": "function",
    "ref": "namespace/name"}`)."""

    def __init__(self, client: AsyncAgentRunsClient) -> None:
        self._client = client

    async def register_tools(
        self, tools: list[Mapping[str, Any]], namespace: str = "default"
    ) -> list[JSONObject]:
        """Register (or update) tool definitions `{name, description, parameters}`; a tool
        without a `namespace` gets `namespace`. Returns the stored tools."""
        body = tool_registration_body(tools, namespace)
        client = self._client
        data = client._data(await client._send("POST", path("tools"), json=body))
        return list(data) if isinstance(data, list) else []

    async def get_tools(self, namespace: str | None = None) -> list[JSONObject]:
        """The registered tools, of one namespace or of all."""
        pages = self._client._paginate(path("tools"), {"namespace": namespace}, None)
        return [tool async for tool in pages]
