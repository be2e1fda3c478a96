"""Client-side (`function`) tools: the run pauses, the caller answers, the run resumes."""

from __future__ import annotations

import time

from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer
from e2e.conftest import Api
from e2e.sse_reader import read_events

LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look a word up in the caller's dictionary.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
}
TIME = {"type": "builtin", "name": "get_current_time"}


def paused_run(api: Api, fake_model: FakeServer, **agent_fields: object) -> dict:
    fake_model.script(
        {
            "tool_calls": [
                {"id": "c1", "name": "lookup", "arguments": {"word": "a"}},
                {"id": "c2", "name": "lookup", "arguments": {"word": "b"}},
                {"id": "s1", "name": "get_current_time", "arguments": {}},
            ]
        }
    )
    agent = api.agent(prompt="define a and b", tools=[LOOKUP, TIME], **agent_fields)
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    return api.wait(run["id"], lambda r: r["status"] in ("awaiting_tool_calls", "failed"))


def answer(api: Api, run_id: str, *pairs: tuple[str, str]):  # type: ignore[no-untyped-def]
    body = {"tool_responses": [{"tool_call_id": i, "output": o} for i, o in pairs]}
    return api.call("POST", f"/v1/agent-runs/{run_id}/tool-responses", json=body)


def test_pause_partial_answers_and_resume(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    run = paused_run(api, fake_model)
    assert run["status"] == "awaiting_tool_calls"
    assert [c["id"] for c in run["pending_tool_calls"]] == ["c1", "c2"]
    # The server-side call of the same turn already ran.
    assert [r["tool_call_id"] for r in run["results"] if r["type"] == "tool_output"] == ["s1"]

    unknown = answer(api, run["id"], ("nope", "x"))
    assert unknown.status_code == 422 and "nope" in unknown.json()["error"]["message"]
    first = answer(api, run["id"], ("c1", "A is a letter"))
    assert first.status_code == 200
    assert [c["id"] for c in first.json()["data"]["pending_tool_calls"]] == ["c2"]
    assert first.json()["data"]["status"] == "awaiting_tool_calls"
    before = api.ok("GET", f"/v1/agent-runs/{run['id']}")
    assert answer(api, run["id"], ("c1", "A is a letter")).status_code == 200  # identical: fine
    clash = answer(api, run["id"], ("c1", "something else"))
    assert clash.status_code == 409 and "c1" in clash.json()["error"]["message"]
    assert api.ok("GET", f"/v1/agent-runs/{run['id']}") == before

    assert answer(api, run["id"], ("c2", "B is too")).json()["data"]["status"] == "queued"
    done = api.wait(run["id"])
    assert done["status"] == "completed" and done["pending_tool_calls"] == []
    resumed = fake_model.requests()[-1]["messages"]
    outputs = {m["tool_call_id"]: m["content"] for m in resumed if m["role"] == "tool"}
    assert outputs["c1"] == "A is a letter" and outputs["c2"] == "B is too" and "s1" in outputs

    events = list(read_events(server.url, run["id"], server.api_key))
    required = [e for e in events if e.type == "tool_calls.required"]
    assert len(required) == 1
    assert [c["id"] for c in required[0].data["tool_calls"]] == ["c1", "c2"]
    late = answer(api, run["id"], ("c2", "B is too"))
    assert late.status_code == 409


def test_pause_deadline_fails_the_run(api: Api, fake_model: FakeServer) -> None:
    run = paused_run(api, fake_model, tool_response_timeout_s=1)
    assert run["status"] == "awaiting_tool_calls"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        run = api.ok("GET", f"/v1/agent-runs/{run['id']}")
        if run["status"] == "failed":
            break
        time.sleep(0.1)
    assert run["status"] == "failed" and run["error"]["type"] == "tool_response_timeout"
    late = answer(api, run["id"], ("c1", "sorry"))
    assert late.status_code == 409 and "too late" in late.json()["error"]["message"]


def test_bad_arguments_go_back_to_the_model_not_to_the_client(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    strict = {**LOOKUP, "parameters": {**LOOKUP["parameters"], "required": ["word"]}}
    fake_model.script(
        {"tool_calls": [{"id": "bad1", "name": "lookup", "arguments": "{not json"}]},
        {"tool_calls": [{"id": "bad2", "name": "lookup", "arguments": {"word": 7}}]},
        {"tool_calls": [{"id": "ok", "name": "lookup", "arguments": {"word": "fine"}}]},
    )
    agent = api.agent(prompt="look it up", tools=[strict])
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    run = api.wait(run["id"], lambda r: r["status"] in ("awaiting_tool_calls", "failed"))
    # Only the valid call ever reached the client.
    assert [c["id"] for c in run["pending_tool_calls"]] == ["ok"]
    sent = fake_model.requests()
    assert len(sent) == 3
    errors = {m["tool_call_id"]: m["content"] for m in sent[2]["messages"] if m["role"] == "tool"}
    assert "not valid JSON" in errors["bad1"]
    assert "word" in errors["bad2"] and "call it again" in errors["bad2"]
    required = []
    for event in read_events(server.url, run["id"], server.api_key):
        if event.type == "tool_calls.required":
            required.append(event.data)
        if event.type == "run.status" and event.data["status"] == "awaiting_tool_calls":
            break  # the stream stays open while the run waits
    assert [[c["id"] for c in r["tool_calls"]] for r in required] == [["ok"]]


def test_invalid_parameter_schema_is_refused_at_save(api: Api) -> None:
    bad = {**LOOKUP, "parameters": {"type": "object", "properties": {"word": {"type": "strang"}}}}
    response = api.call("POST", "/v1/agents", json={"name": "x", "tools": [bad]})
    assert response.status_code == 422 and "tools[0]" in response.json()["error"]["message"]


def test_retrying_the_answer_that_resumed_the_run_is_accepted(
    api: Api, fake_model: FakeServer
) -> None:
    run = paused_run(api, fake_model)
    # The resumed model call is slow, so the retry below arrives while the turn is still on.
    fake_model.configure(first_token_delay_s=1.5)
    both = (("c1", "a"), ("c2", "b"))
    assert answer(api, run["id"], *both).json()["data"]["status"] == "queued"
    # The caller lost the reply and sends the same answers again: same result, not a 409.
    again = answer(api, run["id"], *both)
    assert again.status_code == 200, again.text
    different = answer(api, run["id"], ("c1", "changed"))
    assert different.status_code == 409
    assert api.wait(run["id"])["status"] == "completed"


def test_a_run_may_set_its_own_pause_deadline(api: Api, fake_model: FakeServer) -> None:
    fake_model.script({"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"word": "a"}}]})
    agent = api.agent(prompt="define a", tools=[LOOKUP])  # the agent waits 24 h by default
    bad = api.call(
        "POST", "/v1/agent-runs", json={"agent_id": agent["id"], "tool_response_timeout_s": 0}
    )
    assert bad.status_code == 422 and "tool_response_timeout_s" in bad.text
    run = api.ok(
        "POST", "/v1/agent-runs", json={"agent_id": agent["id"], "tool_response_timeout_s": 1}
    )
    run = api.wait(run["id"], lambda r: r["status"] == "failed", timeout_s=10)
    assert run["error"]["type"] == "tool_response_timeout"
