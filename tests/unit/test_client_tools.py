"""Client-side tools in the SDK, against a MockTransport: handlers, answers, webhooks, registry."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from agentruns.cli import load_tool_handlers
from agentruns.client import (
    AgentRunsClient,
    APIConnectionError,
    AsyncAgentRunsClient,
    Conflict,
    MissingToolHandler,
    ReconnectPolicy,
    RunEvent,
    ToolHandlerError,
    _events,
    aprocess_webhook_tools,
    process_webhook_tools,
)

NO_DELAY = ReconnectPolicy(attempts=3, initial_delay=0, max_delay=0)
CALLS = [
    {"id": "c1", "name": "lookup", "arguments": '{"word": "a"}'},
    {"id": "c2", "name": "lookup", "arguments": '{"word": "b"}'},
]


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AGENTRUNS_BASE_URL", raising=False)
    monkeypatch.delenv("AGENTRUNS_API_KEY", raising=False)
    monkeypatch.setenv("AGENTRUNS_STATE_DIR", str(tmp_path / "state"))


def ok(data: Any, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"data": data, **extra})


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": "conflict", "message": message}})


def sse(seq: int, type_: str, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {type_}\ndata: {json.dumps(data)}\n\n".encode()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], str, str]] = []
        self.lock = threading.Lock()

    def lookup(self, args: dict[str, Any], agent_id: str, run_id: str) -> str:
        with self.lock:
            self.calls.append((args, agent_id, run_id))
        return f"{args['word']}!"

    async def alookup(self, args: dict[str, Any], agent_id: str, run_id: str) -> str:
        return self.lookup(args, agent_id, run_id)


class PausedRun:
    """A run paused on `CALLS`, served as the API serves it; completes once all are answered.

    `on_post` may return a response to send instead of accepting a tool response (it sees
    the run and the posted items first).
    """

    def __init__(
        self, on_post: Callable[[PausedRun, list[dict[str, str]]], Any] | None = None
    ) -> None:
        self.run: dict[str, Any] = {
            "id": "r1",
            "agent_id": "a1",
            "status": "awaiting_tool_calls",
            "pending_tool_calls": [dict(call) for call in CALLS],
            "updated_at": "t1",
            "last_agent_message": None,
        }
        self.events: list[tuple[int, str, dict[str, Any]]] = [
            (1, "run.status", {"status": "in_progress"}),
            (2, "tool_calls.required", {"tool_calls": CALLS}),
            (3, "run.status", {"status": "awaiting_tool_calls"}),
        ]
        self.answers: dict[str, str] = {}
        self.posts: list[list[dict[str, str]]] = []
        self.on_post = on_post

    def answer(self, call_id: str, output: str) -> None:
        self.answers[call_id] = output
        pending = [c for c in self.run["pending_tool_calls"] if c["id"] != call_id]
        self.run["pending_tool_calls"] = pending
        self.events.append((len(self.events) + 1, "tool_call.completed", {"id": call_id}))
        if not pending:
            self.run.update(status="completed", updated_at="t2", last_agent_message="done")
            self.events.append((len(self.events) + 1, "run.completed", dict(self.run)))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/events"):
            after = int(request.headers.get("last-event-id", 0))
            body = b"".join(sse(i, t, d) for i, t, d in self.events if i > after)
            # The stream drops unless the run has ended, as a proxy would cut it.
            dropped = self.run["status"] != "completed"
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=body if not dropped else None,
                stream=None if not dropped else _Dropping(body),
            )
        if path.endswith("/tool-responses"):
            items = json.loads(request.content)["tool_responses"]
            self.posts.append(items)
            if self.on_post is not None:
                response = self.on_post(self, items)
                if response is not None:
                    return response  # type: ignore[no-any-return]
            if self.run["status"] != "awaiting_tool_calls":
                return error(409, "the run is not awaiting tool responses")
            for item in items:
                if item["tool_call_id"] not in self.answers:
                    self.answer(item["tool_call_id"], item["output"])
            return ok(self.run)
        return ok(self.run)


class _Dropping(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        raise httpx.RemoteProtocolError("peer closed connection")

    async def __aiter__(self) -> Any:
        yield self.body
        raise httpx.RemoteProtocolError("peer closed connection")


def sync_client(handler: Callable[[httpx.Request], httpx.Response]) -> AgentRunsClient:
    return AgentRunsClient(
        "http://test", "key", transport=httpx.MockTransport(handler), reconnect=NO_DELAY
    )


def async_client(handler: Callable[[httpx.Request], httpx.Response]) -> AsyncAgentRunsClient:
    return AsyncAgentRunsClient(
        "http://test", "key", transport=httpx.MockTransport(handler), reconnect=NO_DELAY
    )


# -- following a paused run ----------------------------------------------------------------


def test_resume_answers_each_call_once_and_sees_each_event_once() -> None:
    fake, recorder, events = PausedRun(), Recorder(), list[RunEvent]()
    with sync_client(fake) as client:
        client.set_tools({"lookup": (None, recorder.lookup)})
        run = client.execute_agent(resume_run_id="r1", on_event=events.append)
    assert run["status"] == "completed"
    assert sorted(args["word"] for args, _, _ in recorder.calls) == ["a", "b"]
    assert {(agent, run_id) for _, agent, run_id in recorder.calls} == {("a1", "r1")}
    assert [e.id for e in events] == list(range(1, len(fake.events) + 1))
    # One request per call, each sent as soon as its handler returned.
    assert sorted(item["tool_call_id"] for post in fake.posts for item in post) == ["c1", "c2"]
    assert all(len(post) == 1 for post in fake.posts)


async def test_async_resume_skips_calls_answered_elsewhere() -> None:
    fake, recorder = PausedRun(), Recorder()
    fake.answer("c1", "answered by another process")  # the replayed event still names c1
    async with async_client(fake) as client:
        text = await client.run_agent(resume_run_id="r1", tools={"lookup": recorder.alookup})
    assert text == "done"
    assert [args["word"] for args, _, _ in recorder.calls] == ["b"]


def test_a_refused_answer_counts_as_answered_when_the_run_moved_on() -> None:
    def race(fake: PausedRun, items: list[dict[str, str]]) -> httpx.Response | None:
        if items[0]["tool_call_id"] == "c1" and "c1" not in fake.answers:
            fake.answer("c1", "another process was faster")
            return error(409, "tool call c1 was already answered with a different output")
        return None

    fake, recorder = PausedRun(race), Recorder()
    with sync_client(fake) as client:
        run = client.execute_agent(resume_run_id="r1", tools={"lookup": recorder.lookup})
    assert run["status"] == "completed" and fake.answers["c1"] == "another process was faster"
    assert len(recorder.calls) == 2  # each handler ran once; nothing was retried


def test_a_refused_answer_for_a_call_still_pending_is_raised() -> None:
    fake = PausedRun(lambda fake, items: error(409, "something else is wrong"))
    with sync_client(fake) as client, pytest.raises(Conflict):
        client.execute_agent(resume_run_id="r1", tools={"lookup": Recorder().lookup})


def test_a_dropped_answer_is_sent_again() -> None:
    drops: list[list[dict[str, str]]] = []

    def flaky(fake: PausedRun, items: list[dict[str, str]]) -> None:
        if not drops:
            drops.append(items)
            raise httpx.ConnectError("connection reset")

    fake, recorder = PausedRun(flaky), Recorder()
    with sync_client(fake) as client:
        run = client.execute_agent(resume_run_id="r1", tools={"lookup": recorder.lookup})
    assert run["status"] == "completed" and len(recorder.calls) == 2 and len(drops) == 1


def test_missing_handler_raises_before_any_handler_runs() -> None:
    fake, recorder = PausedRun(), Recorder()
    fake.run["pending_tool_calls"].append({"id": "c3", "name": "unknown", "arguments": "{}"})
    with sync_client(fake) as client, pytest.raises(MissingToolHandler) as missing:
        client.execute_agent(resume_run_id="r1", tools={"lookup": recorder.lookup})
    assert missing.value.tool_names == ["unknown"] and missing.value.run_id == "r1"
    assert recorder.calls == [] and fake.posts == []


async def test_handler_errors_become_outputs_or_raise_after_the_others_are_answered() -> None:
    def half_broken(args: dict[str, Any], agent_id: str, run_id: str) -> str:
        if args["word"] == "a":
            raise ValueError("bad word")
        return "fine"

    fake = PausedRun()
    async with async_client(fake) as client:
        await client.execute_agent(resume_run_id="r1", tools={"lookup": half_broken})
    assert fake.answers == {"c1": "error: tool lookup failed: ValueError: bad word", "c2": "fine"}

    fake = PausedRun()
    async with async_client(fake) as client:
        with pytest.raises(ToolHandlerError) as raised:
            await client.execute_agent(
                resume_run_id="r1", tools={"lookup": half_broken}, raise_on_tool_error=True
            )
    assert raised.value.tool_call_id == "c1" and fake.answers == {"c2": "fine"}
    assert isinstance(raised.value.__cause__, ValueError)


def test_schemas_check_arguments_before_the_handler_runs() -> None:
    schema = {"type": "object", "properties": {"word": {"type": "integer"}}}
    fake, recorder = PausedRun(), Recorder()
    with sync_client(fake) as client:
        client.set_tools({"lookup": ({"name": "lookup", "parameters": schema}, recorder.lookup)})
        client.execute_agent(resume_run_id="r1")
    assert recorder.calls == []
    assert fake.answers["c1"].startswith("error: invalid arguments for lookup at word:")


def test_set_tools_refuses_what_it_cannot_call() -> None:
    with sync_client(PausedRun()) as client:
        with pytest.raises(TypeError, match="not callable"):
            client.set_tools({"lookup": (None, "nope")})  # type: ignore[dict-item]
        with pytest.raises(Exception, match="strang"):
            client.set_tools({"lookup": ({"type": "strang"}, Recorder().lookup)})
        # The agent's own inline spec fits the schema slot; without parameters it checks nothing.
        client.set_tools({"lookup": ({"type": "function", "name": "lookup"}, Recorder().lookup)})
        assert client.local_tools["lookup"].parameters is None


def test_cli_loads_tool_handlers_by_import_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "handlers_for_cli.py").write_text(
        "def now(args, agent_id, run_id):\n    return 'x'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    handlers = load_tool_handlers(["get_current_time=handlers_for_cli:now"])
    assert handlers["get_current_time"]({}, "a", "r") == "x"
    for bad in ["no-equals", "name=module_only", "name=handlers_for_cli:missing"]:
        with pytest.raises(typer.BadParameter):
            load_tool_handlers([bad])


# -- starting runs -------------------------------------------------------------------------


def test_string_inputs_are_vars_and_the_message_when_the_agent_has_no_prompt() -> None:
    created: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/agents/a1":
            return ok({"id": "a1", "prompt": None, "version": 1})
        created.append(request)
        return ok({"id": "r1", "status": "queued"})

    with sync_client(handler) as client:
        client.start_agent_run("a1", string_inputs={"1": "What time", "2": "is it?"})
        client.start_agent_run("a1", string_inputs={"1": "x"}, vars={"1": "y"}, message="hi")
    first, second = (json.loads(r.content) for r in created)
    assert first == {
        "agent_id": "a1",
        "vars": {"1": "What time", "2": "is it?"},
        "message": "What time\nis it?",
    }
    assert second == {"agent_id": "a1", "vars": {"1": "y"}, "message": "hi"}
    # Every start carries an idempotency key, so a retried create creates one run.
    keys = {r.headers["idempotency-key"] for r in created}
    assert len(keys) == 2


# -- send_tool_responses and webhooks ------------------------------------------------------


def test_send_tool_responses_takes_a_mapping_or_a_list() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.url.path, json.loads(request.content)))
        return ok({"id": "r1"})

    with sync_client(handler) as client:
        client.send_tool_responses("a1", "r1", {"c1": "x", "c2": {"n": 1}})
        client.send_tool_responses(None, "r1", [{"tool_call_id": "c3", "output": "z"}])
    assert bodies == [
        (
            "/v1/agent-runs/r1/tool-responses",
            {
                "tool_responses": [
                    {"tool_call_id": "c1", "output": "x"},
                    {"tool_call_id": "c2", "output": '{"n":1}'},
                ]
            },
        ),
        (
            "/v1/agent-runs/r1/tool-responses",
            {"tool_responses": [{"tool_call_id": "c3", "output": "z"}]},
        ),
    ]


def paused_payload() -> dict[str, Any]:
    run = {"id": "r1", "agent_id": "a1", "status": "awaiting_tool_calls"}
    return {"type": "run.awaiting_tool_calls", "data": {**run, "pending_tool_calls": CALLS}}


def test_process_webhook_tools_reads_every_payload_shape() -> None:
    recorder = Recorder()
    tools = {"lookup": (None, recorder.lookup)}
    expected = [{"tool_call_id": "c1", "output": "a!"}, {"tool_call_id": "c2", "output": "b!"}]
    payload = paused_payload()
    assert process_webhook_tools(payload, tools) == expected
    assert process_webhook_tools(json.dumps(payload).encode(), tools) == expected
    assert process_webhook_tools(payload["data"], tools) == expected
    assert process_webhook_tools({"type": "run.completed", "data": payload["data"]}, tools) == []
    assert process_webhook_tools({**payload["data"], "status": "queued"}, tools) == []
    with pytest.raises(MissingToolHandler):
        process_webhook_tools(payload, {})
    assert len(recorder.calls) == 6


async def test_aprocess_webhook_tools_runs_async_handlers() -> None:
    recorder = Recorder()
    responses = await aprocess_webhook_tools(paused_payload(), {"lookup": recorder.alookup})
    assert responses == [
        {"tool_call_id": "c1", "output": "a!"},
        {"tool_call_id": "c2", "output": "b!"},
    ]


async def test_client_process_webhook_tools_posts_only_what_is_still_pending() -> None:
    fake, recorder = PausedRun(), Recorder()
    fake.answer("c1", "earlier delivery")
    async with async_client(fake) as client:
        client.set_tools({"lookup": recorder.alookup})
        responses = await client.process_webhook_tools(paused_payload(), post=True)
        assert responses == [{"tool_call_id": "c2", "output": "b!"}]
        assert await client.process_webhook_tools(paused_payload(), post=True) == []
    assert fake.answers == {"c1": "earlier delivery", "c2": "b!"}
    assert len(recorder.calls) == 1


# -- the tool registry ---------------------------------------------------------------------


def test_register_and_get_tools() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return ok(json.loads(request.content)["tools"])
        if "after" not in request.url.params:
            return ok([{"name": "t1"}], has_more=True, next_cursor="t1")
        return ok([{"name": "t2"}], has_more=False, next_cursor=None)

    spec = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    with sync_client(handler) as client:
        stored = client.tools.register_tools([spec, {"name": "x", "namespace": "other"}], "dict")
        assert [t["name"] for t in client.tools.get_tools(namespace="dict")] == ["t1", "t2"]
        with pytest.raises(ValueError, match="builtin"):
            client.tools.register_tools([{"type": "builtin", "name": "get_current_time"}])
    assert stored == [
        {"name": "lookup", "parameters": {"type": "object"}, "namespace": "dict"},
        {"name": "x", "namespace": "other"},
    ]
    assert (seen[0].method, seen[0].url.path) == ("POST", "/v1/tools")
    assert seen[1].url.params["namespace"] == "dict"


async def test_async_register_and_get_tools() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return ok([{"name": "lookup", "namespace": "default"}])
        assert "namespace" not in request.url.params
        return ok([{"name": "lookup"}])

    async with async_client(handler) as client:
        stored = await client.tools.register_tools([{"name": "lookup"}])
        assert stored == [{"name": "lookup", "namespace": "default"}]
        assert await client.tools.get_tools() == [{"name": "lookup"}]


def test_sync_client_runs_async_handlers_and_plain_ones_in_parallel() -> None:
    barrier = threading.Barrier(2, timeout=5)

    def waits_for_the_other(args: dict[str, Any], agent_id: str, run_id: str) -> str:
        barrier.wait()  # both calls of the turn run at once, or this times out
        return "together"

    fake = PausedRun()
    with sync_client(fake) as client:
        client.execute_agent(resume_run_id="r1", tools={"lookup": waits_for_the_other})
    assert fake.answers == {"c1": "together", "c2": "together"}

    async def coroutine_handler(args: dict[str, Any], agent_id: str, run_id: str) -> str:
        await asyncio.sleep(0)
        return "async"

    fake = PausedRun()
    with sync_client(fake) as client:
        client.execute_agent(resume_run_id="r1", tools={"lookup": coroutine_handler})
    assert fake.answers == {"c1": "async", "c2": "async"}


def test_a_connection_that_stayed_up_long_is_no_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # A long model step behind a proxy that closes connections after a while: each cut
    # comes after a healthy connection, so reconnecting never runs out of attempts.
    now = [0.0]

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return now[0]

    monkeypatch.setattr(_events, "time", Clock)
    cursor = _events.StreamCursor("r1", None, ReconnectPolicy(attempts=2))
    for _ in range(5):
        cursor.opened()
        now[0] += _events.HEALTHY_CONNECTION_S
        cursor.backoff(httpx.ReadError("cut by the proxy"))
    assert cursor.failures == 1
    cursor.opened()
    cursor.backoff(httpx.ReadError("cut at once"))
    with pytest.raises(APIConnectionError):
        cursor.backoff(httpx.ConnectError("refused"))
