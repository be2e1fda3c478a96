"""MCP servers as tools: a real server from PyPI over stdio, one of ours over streamable HTTP."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from agentruns.testing.process import ServerProcess, free_port
from agentruns.testing.server import FakeServer
from e2e.conftest import Api, server_env

TIME_SERVER = {
    "type": "mcp",
    "name": "time",
    "transport": "stdio",
    "command": sys.executable,
    "args": ["-m", "mcp_server_time"],
}


@pytest.fixture
def mcp_server(tmp_path: Path, fake_model: FakeServer) -> Iterator[ServerProcess]:
    env = {**server_env(fake_model), "AGENTRUNS_MCP_ALLOW_STDIO": "1"}
    env["AGENTRUNS_TOOL_ALLOW_PRIVATE"] = "1"  # our HTTP MCP server listens on 127.0.0.1
    with ServerProcess(tmp_path, env=env) as process:
        yield process


def calculator() -> MCPServer:
    server = MCPServer("calculator")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def explode() -> str:
        """Always fails."""
        raise ToolError("the calculator exploded")

    @server.tool()
    def secret_tool() -> str:
        """Not allowed for agents."""
        return "should not be offered"

    return server


@pytest.fixture
def calculator_url() -> Iterator[str]:
    """A streamable-HTTP MCP server in a thread on a free port, stopped after the test."""
    port = free_port()
    app = calculator().streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="mcp-calculator", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the MCP server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=10)


def mcp_children(server: ServerProcess) -> list[int]:
    """Pids of the server's child processes running the time server (Linux /proc)."""
    assert server.process is not None
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"mcp_server_time" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def test_stdio_mcp_server_from_pypi_answers_and_is_kept_across_runs(
    mcp_server: ServerProcess, fake_model: FakeServer
) -> None:
    api = Api(mcp_server)
    agent = api.agent(prompt="what time is it in Paris?", tools=[TIME_SERVER])
    fake_model.configure(mode="tools")
    call = {"name": "time_get_current_time", "arguments": {"timezone": "Europe/Paris"}}
    fake_model.script({"tool_calls": [{"id": "t1", **call}]})

    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    done = api.wait(run["id"], timeout_s=30)
    assert done["status"] == "completed", done
    answer = orjson.loads(done["last_agent_message"].removeprefix("done: "))
    assert answer["timezone"] == "Europe/Paris" and answer["datetime"][:2] == "20"
    offered = [t["function"]["name"] for t in fake_model.requests()[0]["tools"]]
    assert offered == ["time_get_current_time", "time_convert_time"]

    # A second run uses the same session; after the server dies, the next run restarts it.
    (first_pid,) = mcp_children(mcp_server)
    fake_model.script({"tool_calls": [{"id": "t2", **call}]})
    second = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    assert api.wait(second["id"], timeout_s=30)["status"] == "completed"
    assert mcp_children(mcp_server) == [first_pid]

    os.kill(first_pid, signal.SIGKILL)
    fake_model.script({"tool_calls": [{"id": "t3", **call}]})
    third = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    done = api.wait(third["id"], timeout_s=30)
    assert done["status"] == "completed", done
    assert "Europe/Paris" in done["last_agent_message"]
    assert mcp_children(mcp_server) not in ([], [first_pid])


def test_streamable_http_mcp_server_with_prefix_filter_and_errors(
    calculator_url: str, mcp_server: ServerProcess, fake_model: FakeServer
) -> None:
    api = Api(mcp_server)
    spec: dict[str, Any] = {
        "type": "mcp",
        "name": "calculator",
        "transport": "http",
        "url": calculator_url,
        "prefix": "calc_",
        "allowed_tools": ["add", "explode"],
    }
    agent = api.agent(prompt="add 2 and 3", tools=[spec])
    fake_model.configure(mode="tools")
    fake_model.script(
        {
            "tool_calls": [
                {"id": "m1", "name": "calc_add", "arguments": {"a": 2, "b": 3}},
                {"id": "m2", "name": "calc_explode", "arguments": {}},
            ]
        }
    )
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    done = api.wait(run["id"], timeout_s=30)

    assert done["status"] == "completed", done
    offered = [t["function"]["name"] for t in fake_model.requests()[0]["tools"]]
    assert offered == ["calc_add", "calc_explode"]
    outputs = {r["tool_call_id"]: r for r in done["results"] if r["type"] == "tool_output"}
    assert outputs["m1"]["output"] == "5" and not outputs["m1"]["is_error"]
    assert outputs["m2"]["is_error"] and "the calculator exploded" in outputs["m2"]["output"]
    assert done["last_agent_message"].startswith("done: 5; error:")


def test_an_mcp_server_that_cannot_start_fails_the_run_naming_it(
    mcp_server: ServerProcess, fake_model: FakeServer
) -> None:
    api = Api(mcp_server)
    ghost = {
        "type": "mcp",
        "name": "ghost",
        "transport": "stdio",
        "command": "agentruns-no-such-mcp-server",
    }
    agent = api.agent(prompt="hello", tools=[ghost])
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    done = api.wait(run["id"], timeout_s=30)

    assert done["status"] == "failed", done
    assert done["error"]["type"] == "mcp_server_unavailable"
    assert "'ghost'" in done["error"]["message"]
    assert "agentruns-no-such-mcp-server" in done["error"]["message"]
    assert fake_model.requests() == []  # failed before the model was called
