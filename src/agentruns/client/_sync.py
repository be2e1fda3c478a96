"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from ._base import STREAM_READ_TIMEOUT, BaseClient, JSONObject, Pager, path, run_create_request
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
from .errors import APIConnectionError, WaitTimeout

__all__ = ["AgentRunsClient", "Agents", "Runs"]


class AgentRunsClient(BaseClient):
    """Synchronous client of an agentruns server.

    `base_url` and `api_key` default to `AGENTRUNS_BASE_URL` / `AGENTRUNS_API_KEY`, then to
    the credentials `agentruns serve` saved, then to a local server. `transport` replaces
    the network (tests pass an `httpx.MockTransport`).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect: ReconnectPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, reconnect=reconnect)
        self._http = httpx.Client(transport=transport, **self._http_options())
        self.agents = Agents(self)
        self.runs = Runs(self)

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

    def get(self, agent_id: str) -> JSONObject:
        return self._client._request("GET", path("agents", agent_id))

    def list(self, *, limit: int | None = None) -> Iterator[JSONObject]:
        """Every agent, page after page; `limit` caps how many in all."""
        return self._client._paginate(path("agents"), {}, limit)

    def update(self, agent_id: str, **fields: Any) -> JSONObject:
        return self._client._request("PATCH", path("agents", agent_id), json=fields)

    def delete(self, agent_id: str) -> None:
        self._client._send("DELETE", path("agents", agent_id))

    def publish(self, agent_id: str) -> JSONObject:
        return self._client._request("POST", path("agents", agent_id, "publish"))


@dataclass(frozen=True)
class _Deadline:
    run_id: str
    timeout: float
    at: float

    @classmethod
    def start(cls, run_id: str, timeout: float) -> _Deadline:
        return cls(run_id, timeout, time.monotonic() + timeout)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def check(self) -> None:
        if self.remaining() <= 0:
            raise WaitTimeout(self.run_id, self.timeout)


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
        deadline = None if timeout is None else _Deadline.start(run_id, timeout)
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
        self, run_id: str, after: int | None, *, follow: bool, deadline: _Deadline | None
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
    def _sleep(seconds: float, deadline: _Deadline | None) -> None:
        time.sleep(seconds if deadline is None else min(seconds, deadline.remaining()))
