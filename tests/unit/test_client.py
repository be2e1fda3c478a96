"""The SDK against a MockTransport: requests it sends, envelopes, pages, credentials, events."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentruns.client import (
    AgentRunsClient,
    APIConnectionError,
    AsyncAgentRunsClient,
    NotFound,
    ReconnectPolicy,
    RunCancelled,
    RunEvent,
    RunFailed,
    WaitTimeout,
)
from agentruns.credentials import load_credentials, save_credentials
from agentruns.errors import ConfigurationError

Handler = Callable[[httpx.Request], httpx.Response]
NO_DELAY = ReconnectPolicy(attempts=3, initial_delay=0, max_delay=0)


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test sees the developer's environment or saved credentials."""
    monkeypatch.delenv("AGENTRUNS_BASE_URL", raising=False)
    monkeypatch.delenv("AGENTRUNS_API_KEY", raising=False)
    state_dir = tmp_path / "state"
    monkeypatch.setenv("AGENTRUNS_STATE_DIR", str(state_dir))
    return state_dir


@pytest.fixture
def client_for() -> Iterator[Callable[[Handler], AgentRunsClient]]:
    clients: list[AgentRunsClient] = []

    def make(handler: Handler) -> AgentRunsClient:
        client = AgentRunsClient(
            base_url="http://test",
            api_key="key",
            transport=httpx.MockTransport(handler),
            reconnect=NO_DELAY,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def ok(data: Any, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"data": data, **extra})


# -- requests and envelopes -------------------------------------------------------------


def test_create_agent_sends_fields_and_key_and_unwraps_data(client_for) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok({"id": "a1", **json.loads(request.content)})

    agent = client_for(handler).agents.create(name="greeter", instructions="Hi {{name}}")
    assert agent == {"id": "a1", "name": "greeter", "instructions": "Hi {{name}}"}
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/v1/agents")
    assert request.headers["authorization"] == "Bearer key"
    assert request.headers["user-agent"].startswith("agentruns-python/")


@pytest.mark.parametrize(
    ("call", "method", "path", "body"),
    [
        (lambda c: c.agents.get("a1"), "GET", "/v1/agents/a1", None),
        (lambda c: c.agents.update("a1", name="x"), "PATCH", "/v1/agents/a1", {"name": "x"}),
        (lambda c: c.agents.publish("a1"), "POST", "/v1/agents/a1/publish", None),
        (lambda c: c.runs.get("r1"), "GET", "/v1/agent-runs/r1", None),
        (lambda c: c.runs.cancel("r1"), "POST", "/v1/agent-runs/r1/cancel", None),
        (
            lambda c: c.runs.continue_("r1", "thanks"),
            "PUT",
            "/v1/agent-runs/r1",
            {"message": "thanks"},
        ),
    ],
)
def test_resource_calls(client_for, call, method: str, path: str, body: Any) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok({"id": "x"})

    assert call(client_for(handler)) == {"id": "x"}
    (request,) = seen
    assert (request.method, request.url.path) == (method, path)
    assert (json.loads(request.content) if request.content else None) == body


def test_delete_accepts_an_empty_answer(client_for) -> None:
    client = client_for(lambda request: httpx.Response(204))
    assert client.agents.delete("a1") is None


def test_ids_cannot_change_the_path(client_for) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return ok({})

    client_for(handler).runs.get("../agents/a1")
    assert seen == ["/v1/agent-runs/..%2Fagents%2Fa1"]


def test_create_run_sends_only_what_is_set(client_for) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok({"id": "r1", "status": "queued"})

    client = client_for(handler)
    client.runs.create("a1", {"name": "Ada"}, message="hello", idempotency_key="k-1")
    client.runs.create("a1")
    first, second = seen
    assert first.url.path == "/v1/agent-runs"
    assert json.loads(first.content) == {
        "agent_id": "a1",
        "vars": {"name": "Ada"},
        "message": "hello",
    }
    assert first.headers["idempotency-key"] == "k-1"
    assert json.loads(second.content) == {"agent_id": "a1"}
    assert "idempotency-key" not in second.headers


# -- pagination -------------------------------------------------------------------------


def paged(items: list[dict[str, Any]], seen: list[httpx.QueryParams]) -> Handler:
    """Serves `items` two per page, cursor = index of the next item."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params)
        start = int(request.url.params.get("after", 0))
        size = min(int(request.url.params.get("limit", 2)), 2)
        page = items[start : start + size]
        more = start + size < len(items)
        return ok(page, has_more=more, next_cursor=str(start + size) if more else None)

    return handler


def test_list_follows_next_cursor_to_the_end(client_for) -> None:
    items = [{"id": f"r{i}"} for i in range(5)]
    seen: list[httpx.QueryParams] = []
    runs = list(client_for(paged(items, seen)).runs.list(status="completed", agent_id="a1"))
    assert runs == items
    assert [params.get("after") for params in seen] == [None, "2", "4"]
    assert all(params["status"] == "completed" for params in seen)
    assert all(params["agent_id"] == "a1" for params in seen)
    assert all("limit" not in params for params in seen)


def test_list_limit_caps_the_total(client_for) -> None:
    items = [{"id": f"r{i}"} for i in range(5)]
    seen: list[httpx.QueryParams] = []
    runs = list(client_for(paged(items, seen)).runs.list(limit=3))
    assert [run["id"] for run in runs] == ["r0", "r1", "r2"]
    assert [(params.get("after"), params["limit"]) for params in seen] == [
        (None, "3"),
        ("2", "1"),
    ]


def test_list_is_lazy(client_for) -> None:
    seen: list[httpx.QueryParams] = []
    agents = client_for(paged([{"id": "a0"}, {"id": "a1"}, {"id": "a2"}], seen)).agents.list()
    assert seen == []
    assert next(agents) == {"id": "a0"}
    assert len(seen) == 1


# -- where the client connects ----------------------------------------------------------


def connection(**kwargs: Any) -> tuple[str, str | None]:
    with AgentRunsClient(**kwargs) as client:
        return client.base_url, client.api_key


def test_defaults_to_a_local_server_without_a_key() -> None:
    assert connection() == ("http://127.0.0.1:8000", None)


def test_arguments_beat_environment_beat_saved_credentials(
    monkeypatch: pytest.MonkeyPatch, isolated_config: Path
) -> None:
    save_credentials(isolated_config, base_url="http://saved:1", api_key="saved-key")
    assert connection() == ("http://saved:1", "saved-key")

    monkeypatch.setenv("AGENTRUNS_BASE_URL", "http://env:2")
    monkeypatch.setenv("AGENTRUNS_API_KEY", "env-key")
    assert connection() == ("http://env:2", "env-key")

    assert connection(base_url="http://arg:3/v1/", api_key="arg-key") == (
        "http://arg:3",
        "arg-key",
    )


def test_saved_key_is_only_sent_to_the_saved_server(isolated_config: Path) -> None:
    save_credentials(isolated_config, base_url="http://saved:1", api_key="saved-key")
    assert connection(base_url="http://elsewhere:9") == ("http://elsewhere:9", None)
    assert connection(base_url="http://saved:1/") == ("http://saved:1", "saved-key")


def test_credentials_file_is_private_and_round_trips(tmp_path: Path) -> None:
    state_dir = tmp_path / "new" / "dir"
    assert load_credentials(state_dir) is None
    path = save_credentials(state_dir, base_url="http://h:1", api_key="k1")
    assert path == state_dir / "credentials.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    save_credentials(state_dir, base_url="http://h:2", api_key="k2")
    creds = load_credentials(state_dir)
    assert creds is not None
    assert (creds.base_url, creds.api_key) == ("http://h:2", "k2")


def test_broken_credentials_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match=r"credentials\.json"):
        load_credentials(tmp_path)


# -- events -----------------------------------------------------------------------------


def sse(seq: int, type_: str, data: dict[str, Any] | None = None) -> bytes:
    return f"id: {seq}\nevent: {type_}\ndata: {json.dumps(data or {})}\n\n".encode()


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body served in pieces that can end in a dropped connection."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error


def stream(chunks: list[bytes], *, drop: bool = False) -> httpx.Response:
    error = httpx.RemoteProtocolError("peer closed connection") if drop else None
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Chunks(chunks, error)
    )


class FakeRun:
    """A run's event log and state, served as the API serves them.

    `connections` lists, per events request, the chunks to send and whether to drop after.
    """

    def __init__(self, run: dict[str, Any], connections: list[tuple[list[bytes], bool]]) -> None:
        self.run = run
        self.connections = connections
        self.resumed_from: list[str | None] = []
        self.gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            self.resumed_from.append(request.headers.get("last-event-id"))
            assert request.headers["accept"] == "text/event-stream"
            chunks, drop = self.connections.pop(0)
            return stream(chunks, drop=drop)
        self.gets += 1
        return ok(self.run)


QUEUED = {"status": "queued"}
COMPLETED = {"id": "r1", "status": "completed", "updated_at": "t2", "last_agent_message": "Hi"}


def test_events_parses_skips_heartbeats_and_stops_at_terminal(client_for) -> None:
    fake = FakeRun(
        COMPLETED,
        [
            (
                [
                    sse(1, "run.status", {"status": "in_progress"}),
                    b": ping\n\n",
                    sse(2, "message.delta", {"delta": "Hel"}),
                    sse(3, "message.delta", {"delta": "lo"}),
                    sse(4, "run.completed", COMPLETED),
                    sse(5, "run.status", {"status": "queued"}),  # never read: past terminal
                ],
                False,
            )
        ],
    )
    events = list(client_for(fake).runs.events("r1"))
    assert [(e.id, e.type) for e in events] == [
        (1, "run.status"),
        (2, "message.delta"),
        (3, "message.delta"),
        (4, "run.completed"),
    ]
    assert events[1] == RunEvent(id=2, type="message.delta", data={"delta": "Hel"})
    assert events[-1].is_terminal
    assert fake.gets == 0


def test_events_resume_with_last_event_id_after_a_drop(client_for) -> None:
    fake = FakeRun(
        COMPLETED,
        [
            # The second event is cut in half by the drop: it must come again, whole.
            ([sse(1, "message.delta", {"delta": "a"}), sse(2, "message.delta")[:10]], True),
            ([sse(2, "message.delta", {"delta": "b"}), b": ping\n\n"], True),
            ([sse(3, "run.completed", COMPLETED)], False),
        ],
    )
    events = list(client_for(fake).runs.events("r1", after=0))
    assert [(e.id, e.data.get("delta")) for e in events] == [(1, "a"), (2, "b"), (3, None)]
    assert fake.resumed_from == ["0", "1", "2"]


def test_events_give_up_after_the_policy_is_exhausted(client_for) -> None:
    fake = FakeRun(COMPLETED, [([], True)] * 4)
    with pytest.raises(APIConnectionError, match="3 times in a row"):
        list(client_for(fake).runs.events("r1"))


def test_events_of_an_unknown_run_raise_not_found(client_for) -> None:
    body = {"error": {"type": "not_found", "message": "no such run"}}
    client = client_for(lambda request: httpx.Response(404, json=body))
    with pytest.raises(NotFound):
        list(client.runs.events("nope"))


def test_events_retry_a_server_error(client_for) -> None:
    answers = [
        httpx.Response(503, json={"error": {"type": "unavailable", "message": "restarting"}}),
        stream([sse(1, "run.completed", COMPLETED)]),
    ]
    events = list(client_for(lambda request: answers.pop(0)).runs.events("r1"))
    assert [e.type for e in events] == ["run.completed"]


def test_a_stream_closed_early_on_a_finished_run_ends_quietly(client_for) -> None:
    fake = FakeRun(COMPLETED, [([], False)])
    assert list(client_for(fake).runs.events("r1", after=9)) == []
    assert fake.gets == 1


def test_follow_reads_past_the_terminal_event_of_a_continued_run(client_for) -> None:
    first_end = {**COMPLETED, "updated_at": "t1"}
    fake = FakeRun(
        COMPLETED,
        [
            ([sse(1, "message.delta"), sse(2, "run.completed", first_end)], False),
            ([sse(3, "run.status", QUEUED), sse(4, "run.completed", COMPLETED)], False),
        ],
    )
    events = list(client_for(fake).runs.follow("r1"))
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert fake.resumed_from == [None, "2"]


# -- wait -------------------------------------------------------------------------------


def test_wait_returns_a_run_that_already_ended_without_streaming(client_for) -> None:
    fake = FakeRun(COMPLETED, [])
    assert client_for(fake).runs.wait("r1") == COMPLETED
    assert fake.resumed_from == []


def test_wait_follows_events_until_the_run_completes(client_for) -> None:
    fake = FakeRun({"id": "r1", "status": "queued", "updated_at": "t0"}, [])
    fake.connections = [([sse(1, "run.status", {"status": "in_progress"})], True)]

    def finish(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events") and not fake.connections:
            fake.run = COMPLETED
            fake.connections = [([sse(2, "run.completed", COMPLETED)], False)]
        return fake(request)

    assert client_for(finish).runs.wait("r1") == COMPLETED
    assert fake.resumed_from == [None, "1"]


@pytest.mark.parametrize(
    ("status", "error_cls"), [("failed", RunFailed), ("cancelled", RunCancelled)]
)
def test_wait_raises_when_the_run_did_not_complete(client_for, status: str, error_cls) -> None:
    error = {"type": "model_error", "message": "boom"} if status == "failed" else None
    ended = {"id": "r1", "status": status, "updated_at": "t1", "error": error}
    connections = [([sse(1, f"run.{status}", ended)], False)]
    fake = FakeRun({"id": "r1", "status": "in_progress"}, connections)

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        fake.run = ended  # every read after the first sees the ended run
        return response

    with pytest.raises(error_cls) as caught:
        client_for(handler).runs.wait("r1")
    assert caught.value.run == ended
    assert caught.value.error == error


def test_wait_times_out(client_for) -> None:
    running = {"id": "r1", "status": "in_progress"}
    fake = FakeRun(running, [([b": ping\n\n"], False)] * 1000)
    client = client_for(fake)
    client.reconnect = ReconnectPolicy(attempts=1000, initial_delay=0.01, max_delay=0.01)
    with pytest.raises(WaitTimeout) as caught:
        client.runs.wait("r1", timeout=0.05)
    assert caught.value.run_id == "r1"
    assert isinstance(caught.value, TimeoutError)


# -- the async client -------------------------------------------------------------------


async def test_async_client_pages_streams_and_waits() -> None:
    items = [{"id": f"r{i}"} for i in range(3)]
    seen: list[httpx.QueryParams] = []
    list_runs = paged(items, seen)
    fake = FakeRun(
        {"id": "r1", "status": "in_progress"},
        [
            ([sse(1, "message.delta", {"delta": "a"})], True),
            ([sse(2, "run.completed", COMPLETED)], False),
        ],
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/agent-runs":
            return list_runs(request)
        response = fake(request)
        fake.run = COMPLETED
        return response

    async with AsyncAgentRunsClient(
        base_url="http://test",
        api_key="key",
        transport=httpx.MockTransport(handler),
        reconnect=NO_DELAY,
    ) as client:
        assert [run async for run in client.runs.list()] == items
        assert await client.runs.wait("r1") == COMPLETED
    assert fake.resumed_from == [None, "1"]


async def test_async_events_resume_and_errors_map() -> None:
    fake = FakeRun(
        COMPLETED,
        [
            ([sse(1, "message.delta", {"delta": "a"})], True),
            ([sse(2, "run.failed", {"status": "failed"})], False),
        ],
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/agents/missing":
            return httpx.Response(404, json={"error": {"type": "not_found", "message": "no"}})
        return fake(request)

    client = AsyncAgentRunsClient(
        base_url="http://test", transport=httpx.MockTransport(handler), reconnect=NO_DELAY
    )
    try:
        events = [event async for event in client.runs.events("r1")]
        assert [(e.id, e.type) for e in events] == [(1, "message.delta"), (2, "run.failed")]
        assert fake.resumed_from == [None, "1"]
        with pytest.raises(NotFound):
            await client.agents.get("missing")
    finally:
        await client.aclose()


async def test_async_wait_times_out() -> None:
    fake = FakeRun({"id": "r1", "status": "in_progress"}, [([b": ping\n\n"], False)] * 1000)
    async with AsyncAgentRunsClient(
        base_url="http://test",
        transport=httpx.MockTransport(fake),
        reconnect=ReconnectPolicy(attempts=1000, initial_delay=0.01, max_delay=0.01),
    ) as client:
        with pytest.raises(WaitTimeout):
            await client.runs.wait("r1", timeout=0.05)
