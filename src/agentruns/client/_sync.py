"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from ._base import (
    DEFAULT_CLAIM_LEASE_S,
    STREAM_READ_TIMEOUT,
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
    Deadline,
    ReconnectPolicy,
    RunEvent,
    StreamCursor,
    next_step,
    run_outcome,
)
from ._runner import RunInputs
from ._sync_runner import EventCallback, SyncAgentRunner
from ._tools import ToolResults, ToolsMap, tool_responses
from ._webhooks import paused_run, process_webhook_tools
from .errors import APIConnectionError

__all__ = ["AgentRunsClient", "Agents", "Runs", "Tools"]


class AgentRunsClient(BaseClient):
    """Synchronous client of an agentruns server.

    `base_url` and `api_key` default to `AGENTRUNS_BASE_URL` / `AGENTRUNS_API_KEY`, then to
    the credentials `agentruns serve` saved, then to a local server. `claim_lease_s` is how
    long a claim on a tool call (renewed while its handler runs) outlives a process that dies
    mid-handler. `transport` replaces the network (tests pass an `httpx.MockTransport`).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect: ReconnectPolicy | None = None,
        claim_lease_s: float = DEFAULT_CLAIM_LEASE_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout=timeout, reconnect=reconnect, claim_lease_s=claim_lease_s
        )
        self._http = httpx.Client(transport=transport, **self._http_options())
        self.agents = Agents(self)
        self.runs = Runs(self)
        self.tools = Tools(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentRunsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- running agents with client-side tools (the Sudoiq-style API) ----------------------

    def run_agent(
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
        on_event: EventCallback | None = None,
    ) -> str:
        """Run the agent to the end, answering its client-side tools; its final text.

        The same as `execute_agent`, which returns the whole run; this returns only
        `last_agent_message` ("" when the agent said nothing).
        """
        run = self.execute_agent(
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

    def execute_agent(
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
        on_event: EventCallback | None = None,
    ) -> JSONObject:
        """Start a run (or re-attach to `resume_run_id`), follow its events, run the handlers
        of its client-side tool calls (a turn's calls in parallel threads), and return the
        completed run. Everything else as `AsyncAgentRunsClient.execute_agent`.
        """
        runner = SyncAgentRunner(
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
            resume_run_id = str(runner.start(agent_id, inputs)["id"])
        return runner.execute(resume_run_id)

    def start_agent_run(
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
        """Start a run and return it at once (`queued`); inputs as for `execute_agent`."""
        inputs = RunInputs(
            string_inputs, vars, message, environment, bundle, callback_url, metadata
        )
        return SyncAgentRunner(self, {}).start(agent_id, inputs, idempotency_key=idempotency_key)

    def send_tool_responses(
        self, agent_id: str | None, task_id: str, results: ToolResults
    ) -> JSONObject:
        """Post tool outputs for the run `task_id`; returns the run.

        `results` is `{tool_call_id: output}` or `[{"tool_call_id", "output"}, ...]`
        (non-string outputs are sent as JSON text). `agent_id` is accepted for
        compatibility; the run id alone names the run.
        """
        body = {"tool_responses": tool_responses(results)}
        return self._request("POST", path("agent-runs", task_id, "tool-responses"), json=body)

    def process_webhook_tools(
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
            return process_webhook_tools(run, tools, raise_on_tool_error=raise_on_tool_error)
        runner = SyncAgentRunner(self, tools, raise_on_tool_error=raise_on_tool_error)
        run = runner._get(str(run["id"]))
        outputs, _held = runner.answer_turn(run, runner.ledger.fresh(run))
        return tool_responses({call.id: output for call, output in outputs})

    def _send(
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
            response = self._http.request(method, url, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise self._connection_error(exc, url) from exc
        return self._body(response)

    def _request(self, method: str, url: str, **kwargs: Any) -> JSONObject:
        data: JSONObject = self._data(self._send(method, url, **kwargs))
        return data

    def _paginate(self, url: str, params: Mapping[str, Any], limit: int | None) -> Iterator[Any]:
        pager = Pager(params, limit)
        while not pager.done:
            yield from pager.take(self._send("GET", url, params=pager.next_params()))


class Agents:
    """`client.agents`: agent definitions (Toolhouse calls them chats)."""

    def __init__(self, client: AgentRunsClient) -> None:
        self._client = client

    def create(self, **fields: Any) -> JSONObject:
        return self._client._request("POST", path("agents"), json=fields)

    def get(self, agent_id: str, *, version: int | None = None) -> JSONObject:
        """The agent as it is now, or one of its earlier versions."""
        params = {"version": version} if version is not None else None
        return self._client._request("GET", path("agents", agent_id), params=params)

    def list(self, *, limit: int | None = None) -> Iterator[JSONObject]:
        """Every agent, page after page; `limit` caps how many in all."""
        return self._client._paginate(path("agents"), {}, limit)

    def update(self, agent_id: str, **fields: Any) -> JSONObject:
        return self._client._request("PATCH", path("agents", agent_id), json=fields)

    def delete(self, agent_id: str) -> None:
        self._client._send("DELETE", path("agents", agent_id))

    def publish(self, agent_id: str) -> JSONObject:
        return self._client._request("POST", path("agents", agent_id, "publish"))


class Runs:
    """`client.runs`: agent runs, their events, and waiting for them."""

    def __init__(self, client: AgentRunsClient) -> None:
        self._client = client

    def create(
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
        return self._client._request("POST", path("agent-runs"), json=body, headers=headers)

    def get(self, run_id: str) -> JSONObject:
        return self._client._request("GET", path("agent-runs", run_id))

    def list(
        self,
        *,
        status: str | None = None,
        agent_id: str | None = None,
        limit: int | None = None,
    ) -> Iterator[JSONObject]:
        """Runs, newest first, page after page; `limit` caps how many in all."""
        params = {"status": status, "agent_id": agent_id}
        return self._client._paginate(path("agent-runs"), params, limit)

    def continue_(self, run_id: str, message: str) -> JSONObject:
        """Add a user message to a completed run; it is queued again with its whole context."""
        return self._client._request("PUT", path("agent-runs", run_id), json={"message": message})

    def cancel(self, run_id: str) -> JSONObject:
        return self._client._request("POST", path("agent-runs", run_id, "cancel"))

    def events(self, run_id: str, *, after: int | None = None) -> Iterator[RunEvent]:
        """The run's events after `after`, live, until the first terminal event.

        A dropped connection is resumed with `Last-Event-ID`: nothing is missed or repeated.
        """
        return self._stream(run_id, after, follow=False, deadline=None)

    def follow(self, run_id: str, *, after: int | None = None) -> Iterator[RunEvent]:
        """Like `events`, but reads past terminal events the run has left behind (it was
        continued since) and stops only when the run is finished now."""
        return self._stream(run_id, after, follow=True, deadline=None)

    def wait(self, run_id: str, *, timeout: float | None = None) -> JSONObject:
        """The run once finished: returned if completed, else `RunFailed` / `RunCancelled`.

        Raises `WaitTimeout` after `timeout` seconds; the run goes on regardless.
        """
        deadline = None if timeout is None else Deadline.start(run_id, timeout)
        run = self.get(run_id)
        if run["status"] not in TERMINAL_STATUSES:
            with closing(self._stream(run_id, None, follow=True, deadline=deadline)) as events:
                for event in events:
                    if event.is_terminal:
                        run = event.data
                    if deadline is not None:
                        deadline.check()
        return run_outcome(run)

    def _stream(
        self, run_id: str, after: int | None, *, follow: bool, deadline: Deadline | None
    ) -> Generator[RunEvent, None, None]:
        client = self._client
        url = path("agent-runs", run_id, "events")
        cursor = StreamCursor(run_id, after, client.reconnect)
        while True:
            if deadline is not None:
                deadline.check()
            read_timeout = STREAM_READ_TIMEOUT
            if deadline is not None:
                read_timeout = min(read_timeout, deadline.remaining())
            terminal = None
            try:
                with connect_sse(
                    client._http,
                    "GET",
                    url,
                    headers=cursor.headers(),
                    timeout=client._stream_timeout(read_timeout),
                ) as source:
                    if source.response.is_error:
                        source.response.read()
                        client._raise_for_status(source.response)
                    cursor.opened()
                    for sse in source.iter_sse():
                        event = cursor.accept(sse)
                        if event is None:
                            continue
                        yield event
                        if event.is_terminal:
                            terminal = event
                            break
                run = self.get(run_id) if terminal is None or follow else None
            except RETRYABLE as exc:
                if deadline is not None:
                    deadline.check()
                self._sleep(cursor.backoff(exc), deadline)
                continue
            except SSEError as exc:
                raise APIConnectionError(f"{url} did not answer with an event stream") from exc
            step = next_step(terminal, run)
            if step == STOP:
                return
            if step == RETRY:
                ended = APIConnectionError("the event stream ended before the run did")
                self._sleep(cursor.backoff(ended), deadline)

    @staticmethod
    def _sleep(seconds: float, deadline: Deadline | None) -> None:
        time.sleep(seconds if deadline is None else min(seconds, deadline.remaining()))


class Tools:
    """`client.tools`: the project's tool registry (agents use `{"type": "function",
    "ref": "namespace/name"}`)."""

    def __init__(self, client: AgentRunsClient) -> None:
        self._client = client

    def register_tools(
        self, tools: list[Mapping[str, Any]], namespace: str = "default"
    ) -> list[JSONObject]:
        """Register (or update) tool definitions `{name, description, parameters}`; a tool
        without a `namespace` gets `namespace`. Returns the stored tools."""
        body = tool_registration_body(tools, namespace)
        data = self._client._data(self._client._send("POST", path("tools"), json=body))
        return list(data) if isinstance(data, list) else []

    def get_tools(self, namespace: str | None = None) -> list[JSONObject]:
        """The registered tools, of one namespace or of all."""
        return list(self._client._paginate(path("tools"), {"namespace": namespace}, None))
