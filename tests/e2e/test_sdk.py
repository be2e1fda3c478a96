"""The Python client (sync and async) against a real server; SSE heartbeats on the wire."""

from __future__ import annotations

import httpx
import pytest

from agentruns.client import AgentRunsClient, AsyncAgentRunsClient, Conflict, NotFound, RunFailed
from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer


def test_sync_client_full_cycle(server: ServerProcess, fake_model: FakeServer) -> None:
    fake_model.script({"text": "a b c d e f", "token_delay_s": 0.02})
    with AgentRunsClient(server.url, server.api_key) as client:
        agent = client.agents.create(name="greeter", prompt="Greet {{name}}")
        run = client.runs.create(agent["id"], {"name": "Ada"})
        events = list(client.runs.events(run["id"]))
        text = "".join(e.data["delta"] for e in events if e.type == "message.delta")
        done = client.runs.wait(run["id"])
        assert text == done["last_agent_message"] == "a b c d e f"
        assert events[-1].type == "run.completed"
        with pytest.raises(Conflict):
            client.runs.cancel(run["id"])
        continued = client.runs.continue_(run["id"], "again")
        assert continued["status"] == "queued"
        assert client.runs.wait(run["id"])["last_agent_message"] == "echo: again"
        assert [r["id"] for r in client.runs.list(agent_id=agent["id"])] == [run["id"]]
        with pytest.raises(NotFound):
            client.runs.get("nope")


async def test_async_client_reports_failed_runs(
    server: ServerProcess, fake_model: FakeServer
) -> None:
    fake_model.script({"error": {"status": 401, "message": "Incorrect API key provided"}})
    async with AsyncAgentRunsClient(server.url, server.api_key) as client:
        agent = await client.agents.create(name="a", prompt="hi")
        run = await client.runs.create(agent["id"])
        with pytest.raises(RunFailed) as failed:
            await client.runs.wait(run["id"], timeout=20)
        assert failed.value.run["error"]["type"] == "model_error"
        assert "API key" in failed.value.run["error"]["message"]


def test_idle_stream_sends_heartbeat_comments(
    server: ServerProcess, fake_model: FakeServer
) -> None:
    # The test server's heartbeat is 1 s; the model takes 2.5 s to say anything.
    fake_model.script({"text": "finally", "first_token_delay_s": 2.5})
    with AgentRunsClient(server.url, server.api_key) as client:
        run = client.runs.create(client.agents.create(name="slow", prompt="x")["id"])
    url = f"{server.url}/v1/agent-runs/{run['id']}/events"
    with httpx.stream("GET", url, headers=server.headers, timeout=20) as response:
        lines = list(response.iter_lines())
    assert any(line.startswith(":") for line in lines)
    written = [line for line in lines if line]
    assert written[-2] == "event: run.completed" and written[-1].startswith("data: ")
