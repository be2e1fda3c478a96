"""kill -9 the server mid-run, start it again: the run resumes from its last completed step."""

from __future__ import annotations

import time

from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer
from e2e.conftest import Api
from e2e.sse_reader import read_events

SLOW_TEXT = " ".join(f"w{i}" for i in range(80))


def test_crash_mid_stream_resumes_once_without_duplicates(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script(
        {"tool_calls": [{"id": "call_a", "name": "get_current_time", "arguments": {}}]},
        {"text": SLOW_TEXT, "token_delay_s": 0.05},
    )
    agent = api.agent(
        prompt="what time is it?", tools=[{"type": "builtin", "name": "get_current_time"}]
    )
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})

    # Wait until the slow final answer is streaming, then crash.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if len(fake_model.requests()) == 2:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # some deltas of the second model call are committed
    server.kill()
    assert len(fake_model.requests()) == 2

    server.start()
    done = api.wait(run["id"], timeout_s=30)
    assert done["status"] == "completed", done
    assert done["last_agent_message"] == "echo: what time is it?"

    # One tool execution, one final assistant message: nothing ran twice.
    kinds = [r["type"] for r in done["results"]]
    assert kinds == ["tool_call", "tool_output", "message"]
    assert len(fake_model.requests()) == 3
    resumed = fake_model.requests()[2]["messages"]
    assert [m["role"] for m in resumed] == ["user", "assistant", "tool"]

    events = list(read_events(server.url, run["id"], server.api_key))
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    types = [e.type for e in events]
    assert types.count("tool_call.completed") == 1
    assert types.count("run.completed") == 1
    discarded = types.index("message.discarded")
    # Deltas of the lost call come before the discard; after it, deltas rebuild the answer.
    assert "message.delta" in types[:discarded]
    after = [e.data["delta"] for e in events[discarded:] if e.type == "message.delta"]
    assert "".join(after) == done["last_agent_message"]
    statuses = [e.data["status"] for e in events if e.type == "run.status"]
    assert statuses == ["queued", "in_progress", "queued", "in_progress", "completed"]
