"""SSE: replay then live, resume with Last-Event-ID or ?after=, deltas coalesced but complete."""

from __future__ import annotations

import time

from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer
from e2e.conftest import Api
from e2e.sse_reader import read_events

WORDS = " ".join(f"word{i}" for i in range(60))


def test_reconnect_with_last_event_id_gets_exactly_the_rest(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    # Tokens 1 ms apart, well inside the flush interval (5 ms): they must be written in groups.
    fake_model.script({"text": WORDS, "token_delay_s": 0.001})
    agent = api.agent(prompt="talk")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})

    k = 4
    first = []
    for event in read_events(server.url, run["id"], server.api_key):
        first.append(event)
        if len(first) == k:
            break  # the client disconnects after event k
    rest = list(read_events(server.url, run["id"], server.api_key, last_event_id=k))

    ids = [e.id for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-1].type == "run.completed"
    deltas = [e for e in first + rest if e.type == "message.delta"]
    # Coalesced: fewer events than the 60 streamed tokens, but nothing lost.
    assert len(deltas) < 60
    final = rest[-1].data["last_agent_message"]
    assert "".join(e.data["delta"] for e in deltas) == final == WORDS

    # ?after= is the same as Last-Event-ID; a full replay after the end closes by itself.
    assert [e.id for e in read_events(server.url, run["id"], server.api_key, after=k)] == ids[k:]
    assert list(read_events(server.url, run["id"], server.api_key, after=ids[-1])) == []


def test_event_types_and_status_changes_in_order(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    agent = api.agent(prompt="hi", tools=[{"type": "builtin", "name": "get_current_time"}])
    fake_model.configure(mode="tools")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    events = list(read_events(server.url, run["id"], server.api_key))
    types = [e.type for e in events]
    assert types[:2] == ["run.status", "run.status"]
    assert [e.data["status"] for e in events if e.type == "run.status"] == [
        "queued",
        "in_progress",
        "completed",
    ]
    started = types.index("tool_call.started")
    assert types[started + 1] == "tool_call.completed"
    assert events[started + 1].data["name"] == "get_current_time"
    assert types[-2:] == ["run.status", "run.completed"]
    assert events[-1].data == api.ok("GET", f"/v1/agent-runs/{run['id']}")


def test_bad_last_event_id_and_unknown_run(server: ServerProcess, api: Api) -> None:
    agent = api.agent(prompt="hi")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    bad = api.call("GET", f"/v1/agent-runs/{run['id']}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request"
    missing = api.call("GET", "/v1/agent-runs/00000000-0000-0000-0000-000000000000/events")
    assert missing.status_code == 404


def test_a_held_delta_is_written_when_the_model_pauses_after_it(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    # "one" and " two" arrive within the flush interval (5 ms) of each other, then the model
    # thinks for 1.5 s: " two" must not wait for " three".
    fake_model.script({"text": "one two three four", "pause_after_tokens": 2, "pause_s": 1.5})
    agent = api.agent(prompt="talk")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})

    seen, arrivals = "", []
    for event in read_events(server.url, run["id"], server.api_key):
        if event.type == "message.delta":
            seen += event.data["delta"]
            arrivals.append((time.monotonic(), seen))
    assert seen == "one two three four"
    before_pause = [at for at, text in arrivals if text.split() == ["one", "two"]]
    after_pause = [at for at, text in arrivals if "three" in text]
    assert before_pause, arrivals
    assert after_pause[0] - before_pause[0] > 1.0
