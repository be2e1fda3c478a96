"""Server-side tools end to end: http tools (with a secret), fetch_url, errors, bundles, crashes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer, start_in_thread
from e2e.conftest import Api, server_env

SECRET = "s3cr3t-7f1c2a9e-never-show-me"
SLOW_FIRST_CALL_S = 30


class Target:
    """What the tools call: records requests; `/slow/{key}` hangs the first time only."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.slow_keys: set[str] = set()

    def app(self) -> Starlette:
        async def record(request: Request) -> dict[str, Any]:
            body = await request.body()
            entry = {
                "path": request.url.path,
                "method": request.method,
                "query": dict(request.query_params),
                "headers": dict(request.headers),
                "body": body.decode(),
            }
            self.requests.append(entry)
            return entry

        async def lookup(request: Request) -> Response:
            entry = await record(request)
            authorized = entry["headers"].get("authorization") == f"Bearer {SECRET}"
            return JSONResponse({"authorized": authorized, "got": entry["body"]})

        async def echo_headers(request: Request) -> Response:
            entry = await record(request)
            return JSONResponse({"you_sent": entry["headers"].get("authorization")})

        async def fail(request: Request) -> Response:
            await record(request)
            return JSONResponse({"detail": "database on fire"}, status_code=500)

        async def binary(request: Request) -> Response:
            await record(request)
            return Response(b"\x89PNG\x00\x01", media_type="image/png")

        async def slow(request: Request) -> Response:
            await record(request)
            key = request.path_params["key"]
            if key not in self.slow_keys:
                self.slow_keys.add(key)
                await asyncio.sleep(SLOW_FIRST_CALL_S)
            return JSONResponse({"slow": key, "done": True})

        async def page(request: Request) -> Response:
            await record(request)
            return HTMLResponse(
                "<html><head><title>Bread</title><style>p{}</style></head>"
                "<body><h1>Sourdough</h1><script>alert(1)</script><p>Flour, water, salt.</p>"
                "</body></html>"
            )

        return Starlette(
            routes=[
                Route("/lookup", lookup, methods=["POST", "GET"]),
                Route("/echo-headers", echo_headers, methods=["POST"]),
                Route("/fail", fail, methods=["POST"]),
                Route("/binary", binary, methods=["POST"]),
                Route("/slow/{key}", slow, methods=["POST"]),
                Route("/page", page, methods=["GET"]),
            ]
        )

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


@pytest.fixture
def target() -> Iterator[tuple[Target, FakeServer]]:
    state = Target()
    with start_in_thread(state.app()) as served:
        yield state, served


def tools_env(fake_model: FakeServer) -> dict[str, str]:
    return {
        **server_env(fake_model),
        "AGENTRUNS_TOOL_ALLOW_PRIVATE": "1",  # the targets listen on 127.0.0.1
        "AGENTRUNS_TOOL_SECRETS": "MY_SECRET",
        "MY_SECRET": SECRET,
    }


@pytest.fixture
def tools_server(tmp_path: Path, fake_model: FakeServer) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path, env=tools_env(fake_model)) as process:
        yield process


def http_tool(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "name": name,
        "description": f"the {name} service",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
        "url": url,
        **extra,
    }


def raw_events(server: ServerProcess, run_id: str) -> str:
    url = f"{server.url}/v1/agent-runs/{run_id}/events"
    return httpx.get(url, headers=server.headers, timeout=10).text


def test_http_tool_sends_arguments_with_a_secret_header_that_never_shows(
    tools_server: ServerProcess, fake_model: FakeServer, target: tuple[Target, FakeServer]
) -> None:
    state, served = target
    api = Api(tools_server)
    auth = {"Authorization": "Bearer ${MY_SECRET}"}
    agent = api.agent(
        prompt="look it up",
        tools=[
            http_tool("lookup", f"{served.url}/lookup", headers=auth),
            http_tool("echo", f"{served.url}/echo-headers", headers=auth),
        ],
    )
    fake_model.configure(mode="tools")
    fake_model.script(
        {
            "tool_calls": [
                {"id": "c1", "name": "lookup", "arguments": {"word": "bread"}},
                {"id": "c2", "name": "echo", "arguments": {}},
            ]
        }
    )
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    done = api.wait(run["id"])

    assert done["status"] == "completed", done
    assert '"authorized":true' in done["last_agent_message"]
    assert '"got":"{\\"word\\":\\"bread\\"}"' in done["last_agent_message"]
    # The target really got the secret and the JSON arguments...
    sent = [r for r in state.requests if r["path"] == "/lookup"]
    assert sent[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert sent[0]["headers"]["content-type"] == "application/json"
    # ...but what echoed it back reached the model redacted.
    assert "[redacted]" in done["last_agent_message"]
    outputs = [r for r in done["results"] if r["type"] == "tool_output"]
    assert [o["is_error"] for o in outputs] == [False, False]
    assert all(o["duration_ms"] >= 0 for o in outputs)

    seen = [
        api.call("GET", f"/v1/agents/{agent['id']}").text,
        api.call("GET", f"/v1/agent-runs/{run['id']}").text,
        api.call("GET", "/v1/agent-runs").text,
        raw_events(tools_server, run["id"]),
        str(fake_model.requests()),
    ]
    assert all(SECRET not in text for text in seen)
    assert "${MY_SECRET}" in seen[0]  # the spec keeps the reference


def test_tool_errors_and_timeouts_reach_the_model_and_the_run_goes_on(
    tools_server: ServerProcess, fake_model: FakeServer, target: tuple[Target, FakeServer]
) -> None:
    _state, served = target
    api = Api(tools_server)
    agent = api.agent(
        prompt="try everything",
        tools=[
            http_tool("fails", f"{served.url}/fail"),
            http_tool("hangs", f"{served.url}/slow/timeout", timeout_s=0.5),
            http_tool("picture", f"{served.url}/binary"),
            {"type": "builtin", "name": "get_current_time"},
        ],
    )
    fake_model.configure(mode="tools")
    fake_model.script(
        {
            "tool_calls": [
                {"id": "e1", "name": "fails", "arguments": {}},
                {"id": "e2", "name": "hangs", "arguments": {}},
                {"id": "e3", "name": "picture", "arguments": {}},
                {"id": "e4", "name": "get_current_time", "arguments": {"timezone": "Mars/Base"}},
                {"id": "e5", "name": "fails", "arguments": {"word": 42}},
                {"id": "e6", "name": "no_such_tool", "arguments": {}},
            ]
        }
    )
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    done = api.wait(run["id"])

    assert done["status"] == "completed", done
    outputs = {r["tool_call_id"]: r for r in done["results"] if r["type"] == "tool_output"}
    assert all(o["is_error"] for o in outputs.values())
    assert "HTTP 500" in outputs["e1"]["output"] and "database on fire" in outputs["e1"]["output"]
    assert "did not finish within 0.5 s" in outputs["e2"]["output"]
    assert "not text" in outputs["e3"]["output"]
    assert "unknown time zone" in outputs["e4"]["output"]
    assert "invalid arguments" in outputs["e5"]["output"]
    assert "no tool named" in outputs["e6"]["output"]
    # The model saw every error and answered.
    assert done["last_agent_message"].startswith("done: error:")
    tool_messages = [m for m in fake_model.requests()[-1]["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 6


def test_fetch_url_and_the_default_bundle(
    tools_server: ServerProcess, fake_model: FakeServer, target: tuple[Target, FakeServer]
) -> None:
    _state, served = target
    api = Api(tools_server)
    plain = api.agent(prompt="hello")
    fake_model.configure(mode="tools")

    # No bundle named: the agent is offered exactly its own tools (none).
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": plain["id"]})
    assert api.wait(run["id"])["last_agent_message"] == "done"
    assert "tools" not in fake_model.requests()[-1]

    # Naming `default` on the run offers the built-ins.
    fake_model.script(
        {
            "tool_calls": [
                {"id": "f1", "name": "fetch_url", "arguments": {"url": served.url + "/page"}}
            ]
        }
    )
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": plain["id"], "bundle": "default"})
    done = api.wait(run["id"])
    assert done["bundle"] == "default"
    offered = [t["function"]["name"] for t in fake_model.requests()[-1]["tools"]]
    assert offered == ["get_current_time", "fetch_url"]
    text = done["last_agent_message"]
    assert "# Bread" in text and "Sourdough" in text and "Flour, water, salt." in text
    assert "alert" not in text and "p{}" not in text

    bundle = api.ok("GET", "/v1/bundles/default")
    assert [t["name"] for t in bundle["tools"]] == ["get_current_time", "fetch_url"]


def test_bundles_api_and_how_bundle_tools_join_the_agents(
    tools_server: ServerProcess, fake_model: FakeServer, target: tuple[Target, FakeServer]
) -> None:
    _state, served = target
    api = Api(tools_server)
    lookup = http_tool("lookup", f"{served.url}/lookup", method="GET")
    created = api.call(
        "POST",
        "/v1/bundles",
        json={"name": "research", "description": "d", "tools": [lookup]},
    )
    assert created.status_code == 201, created.text
    assert api.call("POST", "/v1/bundles", json={"name": "research"}).status_code == 409
    assert [b["name"] for b in api.ok("GET", "/v1/bundles")] == ["default", "research"]
    for method in ("PUT", "DELETE"):
        assert api.call(method, "/v1/bundles/default", json={"tools": []}).status_code == 409

    # Bad specs are refused when saved, naming the field.
    bad_cases = [
        ({"type": "http", "name": "x", "url": "ftp://example.com"}, "tools[0].url"),
        ({"type": "function", "name": "f"}, "tools[0].type"),
        ({**lookup, "headers": {"X": "${OPENAI_API_KEY}"}}, "tools[0].headers.X"),
        ({"type": "mcp", "name": "m", "transport": "stdio", "command": "x"}, "tools[0].transport"),
        ({"type": "mcp", "name": "m", "transport": "http"}, "tools[0]"),
    ]
    for spec, field in bad_cases:
        response = api.call("PUT", "/v1/bundles/bad", json={"tools": [spec]})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == field, response.text
    assert api.call("GET", "/v1/bundles/bad").status_code == 404

    # The agent's own tools come first and win a name clash with the bundle's.
    own = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    agent = api.agent(prompt="hi", tools=[own, {"type": "builtin", "name": "get_current_time"}])
    assert api.call(
        "POST", "/v1/agent-runs", json={"agent_id": agent["id"], "bundle": "nope"}
    ).json()["error"]["details"] == [
        {"field": "bundle", "message": "no bundle named 'nope' (create it with POST /v1/bundles)"}
    ]
    assert (
        api.call("PATCH", f"/v1/agents/{agent['id']}", json={"bundle": "nope"}).status_code == 422
    )

    api.ok(
        "PUT",
        "/v1/bundles/research",
        json={"tools": [lookup, {"type": "builtin", "name": "fetch_url"}]},
    )
    fake_model.configure(mode="echo")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"], "bundle": "research"})
    api.wait(run["id"])
    offered = fake_model.requests()[-1]["tools"]
    assert [t["function"]["name"] for t in offered] == ["get_current_time", "fetch_url", "lookup"]
    lookup_offered = next(t for t in offered if t["function"]["name"] == "lookup")
    assert lookup_offered["function"]["parameters"] == {"type": "object"}  # the agent's own

    assert api.ok("DELETE", "/v1/bundles/research") == {"name": "research", "deleted": True}
    assert api.call("DELETE", "/v1/bundles/research").status_code == 404


def test_a_crash_during_a_tool_call_fails_it_unless_the_tool_is_idempotent(
    tools_server: ServerProcess, fake_model: FakeServer, target: tuple[Target, FakeServer]
) -> None:
    state, served = target
    api = Api(tools_server)
    fake_model.configure(mode="tools")
    once = api.agent(prompt="charge the card", tools=[http_tool("charge", f"{served.url}/slow/a")])
    again = api.agent(
        prompt="read the report",
        tools=[http_tool("report", f"{served.url}/slow/b", idempotent=True)],
    )
    run_once = api.ok("POST", "/v1/agent-runs", json={"agent_id": once["id"]})
    run_again = api.ok("POST", "/v1/agent-runs", json={"agent_id": again["id"]})

    deadline = time.monotonic() + 15
    while (
        sorted(state.paths()) != ["/slow/a", "/slow/b"]
        or not api.ok("GET", f"/v1/agent-runs/{run_again['id']}")["results"]
    ):
        # The idempotent call may start a moment before its `tool_call.started` is written
        # (with the model's reply): the crash must come after, to find a call started.
        assert time.monotonic() < deadline, state.paths()
        time.sleep(0.05)
    tools_server.kill()  # both calls are in flight
    tools_server.start()

    failed = api.wait(run_once["id"], timeout_s=20)
    assert failed["status"] == "failed", failed
    assert failed["error"]["type"] == "tool_outcome_unknown"
    call = next(r for r in failed["results"] if r["type"] == "tool_call")
    assert call["id"] in failed["error"]["message"] and "charge" in failed["error"]["message"]
    assert state.paths().count("/slow/a") == 1  # never sent twice

    completed = api.wait(run_again["id"], timeout_s=20)
    assert completed["status"] == "completed", completed
    assert completed["last_agent_message"] == 'done: {"slow":"b","done":true}'
    assert state.paths().count("/slow/b") == 2
    events = raw_events(tools_server, run_again["id"])
    assert events.count("event: tool_call.started") == 2
    assert events.count("event: tool_call.completed") == 1
