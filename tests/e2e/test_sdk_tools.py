"""The SDK's client-side tools against a real server: `set_tools` + `run_agent`, parallel and
mixed calls, failing and missing handlers, re-attaching, webhooks, the registry and the CLI."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentruns.client import (
    AgentRunsClient,
    AsyncAgentRunsClient,
    MissingToolHandler,
    ReconnectPolicy,
    RunEvent,
    ToolHandlerError,
)
from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer
from e2e.conftest import Api
from e2e.sse_reader import read_events

TIME_FUNCTION = {
    "type": "function",
    "name": "get_current_time",
    "description": "The caller's local time.",
}
LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look a word up in the caller's dictionary.",
    "parameters": {
        "type": "object",
        "properties": {"word": {"type": "string"}},
        "required": ["word"],
    },
}
SERVER_TIME = {"type": "builtin", "name": "get_current_time"}


class Recorder:
    """Handlers that record every call (thread-safe: sync handlers run in threads)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str, str]] = []
        self._lock = threading.Lock()

    def record(self, name: str, args: dict[str, Any], agent_id: str, run_id: str) -> None:
        with self._lock:
            self.calls.append((name, args, agent_id, run_id))

    async def lookup(self, args: dict[str, Any], agent_id: str, run_id: str) -> str:
        self.record("lookup", args, agent_id, run_id)
        await asyncio.sleep(0.01)
        return f"{args['word']} means {args['word'].upper()}"

    def lookup_sync(self, args: dict[str, Any], agent_id: str, run_id: str) -> str:
        self.record("lookup", args, agent_id, run_id)
        return f"{args['word']} means {args['word'].upper()}"

    def words(self) -> Counter[str]:
        return Counter(args["word"] for _, args, _, _ in self.calls)


def lookup_calls(*words: str) -> dict[str, Any]:
    return {
        "tool_calls": [
            {"id": f"call-{word}", "name": "lookup", "arguments": {"word": word}} for word in words
        ]
    }


def tool_messages(fake_model: FakeServer) -> dict[str, str]:
    """Every tool output the model was sent, by call id."""
    outputs = {}
    for request in fake_model.requests():
        for message in request["messages"]:
            if message["role"] == "tool":
                outputs[message["tool_call_id"]] = message["content"]
    return outputs


# -- the classic example -----------------------------------------------------------------


async def test_classic_example_async(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.configure(mode="tools")
    agent = api.agent(instructions="Answer questions.", tools=[TIME_FUNCTION])
    seen: list[tuple[dict[str, Any], str, str]] = []

    async def get_current_time(args: dict[str, Any], agent_id: str, task_id: str) -> str:
        seen.append((args, agent_id, task_id))
        return "2030-01-02T03:04:05+00:00"

    async with AsyncAgentRunsClient(server.url, server.api_key) as client:
        client.set_tools({"get_current_time": (None, get_current_time)})
        final = await client.run_agent(
            agent_id=agent["id"],
            string_inputs={"1": "What time is it?"},
            environment="playground",
        )
    assert "2030-01-02T03:04:05+00:00" in final
    ((args, agent_id, run_id),) = seen
    assert args == {} and agent_id == agent["id"]
    run = api.ok("GET", f"/v1/agent-runs/{run_id}")
    assert run["status"] == "completed" and run["last_agent_message"] == final
    # No prompt on the agent: the inputs' text was the user message.
    first = fake_model.requests()[0]["messages"]
    assert [m["content"] for m in first if m["role"] == "user"] == ["What time is it?"]


def test_classic_example_sync(server: ServerProcess, api: Api, fake_model: FakeServer) -> None:
    fake_model.configure(mode="tools")
    agent = api.agent(prompt="Tell {{who}} the time.", tools=[TIME_FUNCTION])
    seen: list[str] = []

    def get_current_time(args: dict[str, Any], agent_id: str, task_id: str) -> dict[str, str]:
        seen.append(task_id)
        return {"time": "noon"}  # not a string: sent as JSON text

    events: list[RunEvent] = []
    with AgentRunsClient(server.url, server.api_key) as client:
        client.set_tools({"get_current_time": get_current_time})
        run = client.execute_agent(
            agent["id"], string_inputs={"who": "Ada"}, on_event=events.append
        )
    assert run["status"] == "completed" and seen == [run["id"]]
    assert run["last_agent_message"] == 'done: {"time":"noon"}'
    # The agent has a prompt: the inputs were its vars.
    first = fake_model.requests()[0]["messages"]
    assert [m["content"] for m in first if m["role"] == "user"] == ["Tell Ada the time."]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events].count("tool_calls.required") == 1


# -- several calls per turn, server and client side ----------------------------------------


async def test_parallel_and_mixed_calls_in_one_turn(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    turn = lookup_calls("a", "b", "c")
    turn["tool_calls"].append({"id": "srv", "name": "get_current_time", "arguments": {}})
    fake_model.script(turn, {"text": "all done"})
    agent = api.agent(prompt="define things", tools=[LOOKUP, SERVER_TIME])
    recorder = Recorder()
    async with AsyncAgentRunsClient(server.url, server.api_key) as client:
        run = await client.execute_agent(agent["id"], tools={"lookup": (LOOKUP, recorder.lookup)})
    assert run["last_agent_message"] == "all done"
    assert recorder.words() == Counter({"a": 1, "b": 1, "c": 1})
    outputs = tool_messages(fake_model)
    assert outputs["call-a"] == "a means A" and outputs["call-c"] == "c means C"
    assert outputs["srv"].startswith("20")  # the server ran its own tool: an ISO date


# -- failing and missing handlers ----------------------------------------------------------


async def test_a_failing_handler_tells_the_model_or_raises(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.configure(mode="tools")
    agent = api.agent(prompt="look it up", tools=[LOOKUP])

    def broken(args: dict[str, Any], agent_id: str, run_id: str) -> str:
        raise KeyError("no such word")

    async with AsyncAgentRunsClient(server.url, server.api_key) as client:
        client.set_tools({"lookup": (None, broken)})
        final = await client.run_agent(agent["id"])
        assert "error: tool lookup failed: KeyError" in final and "no such word" in final

        with pytest.raises(ToolHandlerError) as raised:
            await client.run_agent(agent["id"], raise_on_tool_error=True)
    assert isinstance(raised.value.__cause__, KeyError)
    run = api.ok("GET", f"/v1/agent-runs/{raised.value.run_id}")
    assert run["status"] == "awaiting_tool_calls"
    assert [c["id"] for c in run["pending_tool_calls"]] == [raised.value.tool_call_id]


def test_missing_handler_leaves_the_run_paused_and_a_resume_finishes_it(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script(lookup_calls("x", "y"), {"text": "thanks"})
    agent = api.agent(prompt="look it up", tools=[LOOKUP])
    recorder = Recorder()
    with AgentRunsClient(server.url, server.api_key) as client:
        with pytest.raises(MissingToolHandler) as missing:
            client.run_agent(agent["id"])
        assert missing.value.tool_names == ["lookup"]
        run = api.ok("GET", f"/v1/agent-runs/{missing.value.run_id}")
        assert run["status"] == "awaiting_tool_calls" and len(run["pending_tool_calls"]) == 2
        assert "tool_output" not in [r["type"] for r in run["results"]]  # nothing answered

        client.set_tools({"lookup": recorder.lookup_sync})
        final = client.run_agent(resume_run_id=run["id"])
    assert final == "thanks" and recorder.words() == Counter({"x": 1, "y": 1})


# -- re-attaching from another client ------------------------------------------------------


class Gone(Exception):
    """The first client's process 'dies' here."""


async def test_a_second_client_resumes_without_calling_a_handler_twice(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script(
        lookup_calls("r1a", "r1b"),
        lookup_calls("r2a", "r2b"),
        lookup_calls("r3"),
        {"text": "finished"},
    )
    agent = api.agent(prompt="go", tools=[LOOKUP])
    recorder = Recorder()
    required = 0

    def die_at_second_round(event: RunEvent) -> None:
        nonlocal required
        if event.type == "tool_calls.required":
            required += 1
            if required == 2:
                raise Gone

    # The first client answers round 1 (sync, in a thread) and is gone before round 2.
    def first() -> str:
        with AgentRunsClient(server.url, server.api_key) as client:
            run = client.start_agent_run(agent["id"])
            try:
                client.execute_agent(
                    resume_run_id=run["id"],
                    tools={"lookup": recorder.lookup_sync},
                    on_event=die_at_second_round,
                )
            except Gone:
                return str(run["id"])
        raise AssertionError("the first client was meant to stop at round 2")

    run_id = await asyncio.to_thread(first)
    assert recorder.words() == Counter({"r1a": 1, "r1b": 1})

    async with AsyncAgentRunsClient(server.url, server.api_key) as client:
        client.set_tools({"lookup": recorder.lookup})
        # Re-attaching replays the whole history, round 1's request included.
        final = await client.run_agent(resume_run_id=run_id)
        # Re-attaching to a finished run calls nothing and returns it.
        again = await client.execute_agent(resume_run_id=run_id)
    assert final == "finished" and again["last_agent_message"] == "finished"
    assert recorder.words() == Counter({"r1a": 1, "r1b": 1, "r2a": 1, "r2b": 1, "r3": 1})
    assert {run for _, _, _, run in recorder.calls} == {run_id}


# -- webhooks ------------------------------------------------------------------------------


async def test_process_webhook_tools_then_send_tool_responses(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script(lookup_calls("w1", "w2"), lookup_calls("w3"), {"text": "hooked"})
    agent = api.agent(prompt="go", tools=[LOOKUP])
    recorder = Recorder()
    tools = {"lookup": (None, recorder.lookup)}
    paused = lambda r: r["status"] in ("awaiting_tool_calls", "failed")  # noqa: E731
    async with AsyncAgentRunsClient(server.url, server.api_key) as client:
        run = await client.start_agent_run(agent["id"])
        assert run["status"] == "queued"
        # What the webhook receiver gets, as JSON text: answered by hand.
        paused_run = api.wait(run["id"], paused)
        payload = json.dumps({"type": "run.awaiting_tool_calls", "data": paused_run})
        responses = await client.process_webhook_tools(payload, tools)
        assert responses == [
            {"tool_call_id": "call-w1", "output": "w1 means W1"},
            {"tool_call_id": "call-w2", "output": "w2 means W2"},
        ]
        resumed = await client.send_tool_responses(agent["id"], run["id"], responses)
        assert resumed["status"] == "queued"
        # The second pause: delivered twice (webhooks retry), posted directly, run once.
        paused_run = api.wait(run["id"], paused)
        delivery = {"type": "run.awaiting_tool_calls", "data": paused_run}
        client.set_tools(tools)
        assert await client.process_webhook_tools(delivery, post=True) == [
            {"tool_call_id": "call-w3", "output": "w3 means W3"}
        ]
        assert await client.process_webhook_tools(delivery, post=True) == []
        assert await client.process_webhook_tools({"type": "run.completed", "data": {}}) == []
        done = await client.runs.wait(run["id"], timeout=20)
    assert done["last_agent_message"] == "hooked"
    assert recorder.words() == Counter({"w1": 1, "w2": 1, "w3": 1})


# -- the tool registry ---------------------------------------------------------------------


def test_registered_tools_are_listed_and_usable_by_reference(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    with AgentRunsClient(server.url, server.api_key) as client:
        stored = client.tools.register_tools([LOOKUP], namespace="dict")
        assert [(t["namespace"], t["name"]) for t in stored] == [("dict", "lookup")]
        assert stored[0]["parameters"] == LOOKUP["parameters"]
        assert [t["name"] for t in client.tools.get_tools(namespace="dict")] == ["lookup"]
        assert client.tools.get_tools(namespace="nothing-here") == []

        fake_model.script(lookup_calls("ref"), {"text": "by reference"})
        agent = client.agents.create(
            name="ref", prompt="go", tools=[{"type": "function", "ref": "dict/lookup"}]
        )
        recorder = Recorder()
        client.set_tools({"lookup": recorder.lookup_sync})
        assert client.run_agent(agent["id"]) == "by reference"
    assert recorder.words() == Counter({"ref": 1})


# -- the CLI -------------------------------------------------------------------------------


def test_cli_runs_local_tool_handlers(
    server: ServerProcess, api: Api, fake_model: FakeServer, tmp_path: Path
) -> None:
    handlers = tmp_path / "my_tools.py"
    handlers.write_text(
        "import asyncio\n"
        "async def lookup(args, agent_id, run_id):\n"
        "    await asyncio.sleep(0)\n"
        "    return 'meaning of ' + args['word']\n"
        "def clock(args, agent_id, run_id):\n"
        "    return '12:00'\n"
    )
    fake_model.script(lookup_calls("cli"), {"text": "from the cli"})
    agent = api.agent(prompt="go", tools=[LOOKUP, TIME_FUNCTION])
    env = {k: v for k, v in server.env.items() if not k.startswith("AGENTRUNS_API")}
    command = [sys.executable, "-m", "agentruns", "run", agent["id"]]
    handler_options = ["--tool-handler", "lookup=my_tools:lookup"]
    handler_options += ["--tool-handler", "get_current_time=my_tools:clock"]
    done = subprocess.run(
        [*command, *handler_options],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "from the cli"
    assert tool_messages(fake_model)["call-cli"] == "meaning of cli"

    # Without the handler the run stays paused; `runs follow` with it finishes the run.
    fake_model.script(lookup_calls("later"), {"text": "resumed"})
    paused = subprocess.run(
        [*command, "--tool-handler", "get_current_time=my_tools:clock"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert paused.returncode == 1 and "lookup" in paused.stderr
    assert "Traceback" not in paused.stderr
    (waiting,) = [r for r in api.ok("GET", "/v1/agent-runs") if r["status"] != "completed"]
    assert waiting["status"] == "awaiting_tool_calls"
    resumed = subprocess.run(
        [sys.executable, "-m", "agentruns", "runs", "follow", waiting["id"], *handler_options],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().endswith("resumed")
    assert tool_messages(fake_model)["call-later"] == "meaning of later"


# -- a connection that keeps dropping ------------------------------------------------------


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 (own thread and event loop) in front of the server.

    Every connection that carries an event-stream request is cut (both sides aborted, like
    a proxy timeout or a network blip) a random moment after that request. The cut may
    land mid-event, between events, or on a later request reusing the connection.
    """

    def __init__(self, target_port: int, seed: int, cut_after_s: tuple[float, float]) -> None:
        self.target_port = target_port
        self.rng = random.Random(seed)
        self.cut_after_s = cut_after_s
        self.cuts = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_w)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.add(server_w)
        closed = False
        timer: asyncio.TimerHandle | None = None

        def cut() -> None:
            if not closed:
                self.cuts += 1
                client_w.transport.abort()
                server_w.transport.abort()

        async def pump(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
        ) -> None:
            nonlocal timer
            while data := await reader.read(65536):
                if up and data.startswith(b"GET ") and b"/events" in data.split(b"\r\n", 1)[0]:
                    if timer is not None:
                        timer.cancel()
                    delay = self.rng.uniform(*self.cut_after_s)
                    timer = asyncio.get_running_loop().call_later(delay, cut)
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(pump(client_r, server_w, True), pump(server_r, client_w, False))
        except (ConnectionError, OSError):
            pass
        finally:
            closed = True
            if timer is not None:
                timer.cancel()
            client_w.transport.abort()
            server_w.transport.abort()
            self._writers -= {client_w, server_w}
            self._handlers.discard(task)


ROUNDS = 8


async def test_run_survives_an_event_stream_cut_again_and_again(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    rounds = [lookup_calls(f"w{i}a", f"w{i}b") for i in range(ROUNDS)]
    for i, turn in enumerate(rounds):
        turn.update(text=f"round {i} " + " ".join(f"t{j}" for j in range(8)))
    final_text = " ".join(f"end{j}" for j in range(20))
    fake_model.script(*rounds, {"text": final_text})
    fake_model.configure(token_delay_s=0.03)
    agent = api.agent(prompt="go", tools=[LOOKUP])
    recorder = Recorder()
    seen: list[RunEvent] = []
    # Reconnect at once and keep trying: the proxy cuts streams faster than events arrive.
    fast = ReconnectPolicy(attempts=100, initial_delay=0.01, max_delay=0.05)
    seed = random.randrange(1_000_000)
    started = time.monotonic()
    with CuttingProxy(server.port, seed, (0.02, 0.2)) as proxy:
        async with AsyncAgentRunsClient(proxy.url, server.api_key, reconnect=fast) as client:
            client.set_tools({"lookup": recorder.lookup})
            final = await client.run_agent(agent["id"], on_event=seen.append)
    elapsed = time.monotonic() - started
    assert final.endswith(final_text), f"seed {seed}"
    assert proxy.cuts >= 20, f"only {proxy.cuts} cuts (seed {seed})"
    assert elapsed < 30
    expected = Counter({f"w{i}{x}": 1 for i in range(ROUNDS) for x in "ab"})
    assert recorder.words() == expected, f"seed {seed}"
    # Every event exactly once and in order, as the server stored them.
    run_id = recorder.calls[0][3]
    stored = list(read_events(server.url, run_id, server.api_key))
    assert [e.id for e in seen] == [e.id for e in stored] == list(range(1, len(stored) + 1))
    assert [e.type for e in seen] == [e.type for e in stored]
    text = "".join(e.data["delta"] for e in seen if e.type == "message.delta")
    assert text.endswith(final_text)
