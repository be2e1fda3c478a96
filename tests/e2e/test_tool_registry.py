"""The tool registry: versioned definitions, referenced by agents as `namespace/name`."""

from __future__ import annotations

from agentruns.testing.server import FakeServer
from e2e.conftest import Api

WEATHER = {
    "name": "get_weather",
    "namespace": "acme",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_register_list_and_replace(api: Api) -> None:
    first = api.ok("POST", "/v1/tools", json=WEATHER)
    assert [(t["name"], t["version"]) for t in first] == [("get_weather", 1)]
    api.ok("POST", "/v1/tools", json={"tools": [{"name": "ping"}]})
    again = api.ok("POST", "/v1/tools", json={"tools": [{**WEATHER, "description": "v2"}]})
    assert again[0]["version"] == 2

    acme = api.ok("GET", "/v1/tools?namespace=acme")
    assert [(t["name"], t["description"], t["version"]) for t in acme] == [("get_weather", "v2", 2)]
    everything = api.ok("GET", "/v1/tools")
    assert {(t["namespace"], t["name"]) for t in everything} == {
        ("acme", "get_weather"),
        ("default", "ping"),
    }


def test_bad_registrations_are_refused(api: Api) -> None:
    for body, mentions in [
        ({"name": "has space"}, "name"),
        ({"tools": []}, "tools"),
        ({"name": "x", "parameters": {"type": "nonsense"}}, "parameters"),
        ({"name": "x", "surprise": 1}, "surprise"),
    ]:
        response = api.call("POST", "/v1/tools", json=body)
        assert response.status_code == 422, response.text
        assert mentions in response.text
    assert api.ok("GET", "/v1/tools") == []


def test_agents_reference_the_latest_definition(api: Api, fake_model: FakeServer) -> None:
    missing = api.call(
        "POST",
        "/v1/agents",
        json={"name": "a", "tools": [{"type": "function", "ref": "acme/nope"}]},
    )
    assert missing.status_code == 422 and "acme/nope" in missing.json()["error"]["message"]
    malformed = api.call(
        "POST", "/v1/agents", json={"name": "a", "tools": [{"type": "function", "ref": "nope"}]}
    )
    assert malformed.status_code == 422 and "namespace/tool_name" in malformed.text

    api.ok("POST", "/v1/tools", json=WEATHER)
    agent = api.agent(prompt="weather?", tools=[{"type": "function", "ref": "acme/get_weather"}])
    api.ok("POST", "/v1/tools", json={**WEATHER, "description": "Weather, now in kelvin."})
    fake_model.script(
        {"tool_calls": [{"id": "w1", "name": "get_weather", "arguments": {"city": "Oslo"}}]}
    )
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    run = api.wait(run["id"], lambda r: r["status"] in ("awaiting_tool_calls", "failed"))
    assert run["status"] == "awaiting_tool_calls", run
    assert run["pending_tool_calls"] == [
        {"id": "w1", "name": "get_weather", "arguments": '{"city":"Oslo"}'}
    ]
    offered = fake_model.requests()[0]["tools"]
    assert offered[0]["function"]["description"] == "Weather, now in kelvin."
