"""The Toolhouse Agent Runs flow, exactly as their docs show it, with `requests`."""

from __future__ import annotations

import requests

from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer
from e2e.conftest import Api


def test_create_poll_continue_keeps_context(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    agent = api.agent(instructions="You greet {{name}}.", prompt="Write a greeting for {{name}}")
    url = f"{server.url}/v1/agent-runs"
    headers = {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"}
    payload = {"chat_id": agent["id"], "vars": {"name": "John Doe"}}

    response = requests.post(url, headers=headers, json=payload, timeout=10)
    assert response.status_code == 200, response.text
    run = response.json()["data"]
    assert run["status"] == "queued" and run["results"] == [] and run["chat_id"] == agent["id"]

    done = api.wait(run["id"])
    assert done["status"] == "completed"
    assert done["last_agent_message"] == "echo: Write a greeting for John Doe"
    assert done["results"][-1] == {
        "type": "message",
        "role": "assistant",
        "content": "echo: Write a greeting for John Doe",
    }

    response = requests.put(
        f"{url}/{run['id']}", headers=headers, json={"message": "Perfect, thank you!"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["status"] == "queued"
    again = api.wait(
        run["id"], lambda r: r["status"] == "completed" and r["usage"]["requests"] == 2
    )
    assert again["last_agent_message"] == "echo: Perfect, thank you!"

    # The model saw the whole earlier conversation on the second call.
    second = fake_model.requests()[-1]["messages"]
    assert [(m["role"], m["content"]) for m in second] == [
        ("system", "You greet John Doe."),
        ("user", "Write a greeting for John Doe"),
        ("assistant", "echo: Write a greeting for John Doe"),
        ("user", "Perfect, thank you!"),
    ]


def test_continue_a_run_that_is_not_completed_is_409(api: Api, fake_model: FakeServer) -> None:
    fake_model.configure(first_token_delay_s=2)
    agent = api.agent(prompt="slow")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    response = api.call("PUT", f"/v1/agent-runs/{run['id']}", json={"message": "more"})
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "conflict"
    assert "queued" in response.json()["error"]["message"] or "in_progress" in response.text


def test_production_runs_the_published_version(api: Api) -> None:
    agent = api.agent(prompt="v1 prompt")
    response = api.call(
        "POST", "/v1/agent-runs", json={"agent_id": agent["id"], "environment": "production"}
    )
    assert response.status_code == 422 and "publish" in response.json()["error"]["message"]
    api.ok("POST", f"/v1/agents/{agent['id']}/publish")
    api.ok("PATCH", f"/v1/agents/{agent['id']}", json={"prompt": "v2 prompt"})

    prod = api.ok(
        "POST", "/v1/agent-runs", json={"agent_id": agent["id"], "environment": "production"}
    )
    play = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    assert prod["agent_version"] == 1 and play["agent_version"] == 2
    assert api.wait(prod["id"])["last_agent_message"] == "echo: v1 prompt"
    assert api.wait(play["id"])["last_agent_message"] == "echo: v2 prompt"

    # Continuing keeps the pinned version even after another update.
    api.ok("PATCH", f"/v1/agents/{agent['id']}", json={"instructions": "v3"})
    api.ok("PUT", f"/v1/agent-runs/{prod['id']}", json={"message": "again"})
    assert api.wait(prod["id"], lambda r: r["usage"]["requests"] == 2)["agent_version"] == 1


def test_missing_template_var_is_named(api: Api) -> None:
    agent = api.agent(instructions="Hi {{name}} from {{city}}", prompt="Go", vars={"city": "Paris"})
    response = api.call("POST", "/v1/agent-runs", json={"chat_id": agent["id"]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"] == {"missing_vars": ["name"]} and "name" in error["message"]
    assert api.ok("GET", "/v1/agent-runs") == []
