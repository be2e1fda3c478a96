"""The CLI against a MockTransport-backed client, and its operator commands against fakes."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import agentruns
from agentruns import cli
from agentruns.client import AgentRunsClient, ReconnectPolicy
from agentruns.config import Settings

runner = CliRunner()


def sse(seq: int, type_: str, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {type_}\ndata: {json.dumps(data)}\n\n".encode()


def api_error(status: int, type_: str, message: str, details: Any = None) -> httpx.Response:
    body = {"error": {"type": type_, "message": message, "details": details}}
    return httpx.Response(status, json=body)


class FakeServer:
    """Just enough of the API for the CLI: agents, runs, and one run's event log."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.agents = [{"id": "a-1", "name": "greeter", "model": "test", "version": 1}]
        self.run: dict[str, Any] = {"id": "r-1", "agent_id": "a-1", "status": "queued"}
        self.events: list[bytes] = []
        self.next_turn: list[str] = []  # deltas the run streams after a continue

    def finish(self, status: str, *deltas: str, error: dict[str, Any] | None = None) -> None:
        """Script the run: it streams `deltas` around a tool call, then ends in `status`."""
        end = {**self.run, "status": status, "error": error, "updated_at": "t1"}
        end["usage"] = {"requests": 2, "input_tokens": 10, "output_tokens": 5}
        events = [("run.status", {**self.run, "status": "in_progress"})]
        events.append(("tool_call.started", {"name": "get_time", "arguments": {"tz": "UTC"}}))
        events.append(("tool_call.completed", {"name": "get_time", "output": "12:00"}))
        events += [("message.delta", {"delta": delta}) for delta in deltas]
        events += [("message.completed", {}), ("run.status", end), (f"run.{status}", end)]
        self.events = [sse(i, type_, data) for i, (type_, data) in enumerate(events, start=1)]
        self.run = end

    def continue_run(self) -> None:
        """Append the next turn to the log: the run ends again, later than before."""
        self.run = {**self.run, "updated_at": "t2"}
        events = [("run.status", {**self.run, "status": "queued"})]
        events += [("message.delta", {"delta": delta}) for delta in self.next_turn]
        events.append(("run.completed", self.run))
        start = len(self.events) + 1
        self.events += [sse(i, type_, data) for i, (type_, data) in enumerate(events, start)]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = (request.method, request.url.path)
        body = json.loads(request.content) if request.content else None
        if route == ("POST", "/v1/agents"):
            return self.ok({"id": "a-2", **body})
        if route == ("GET", "/v1/agents"):
            return self.ok(self.agents, has_more=False, next_cursor=None)
        if route == ("GET", "/v1/agents/a-1"):
            return self.ok(self.agents[0])
        if route == ("POST", "/v1/agent-runs"):
            if body["agent_id"] != "a-1":
                return api_error(404, "not_found", "no such agent")
            if "name" not in body.get("vars", {}):
                return api_error(422, "validation_error", "missing template vars", ["name"])
            return self.ok(self.run)
        if route == ("GET", "/v1/agent-runs"):
            return self.ok([self.run], has_more=False, next_cursor=None)
        if route == ("GET", "/v1/agent-runs/r-1"):
            return self.ok(self.run)
        if route == ("PUT", "/v1/agent-runs/r-1"):
            self.continue_run()
            return self.ok({**self.run, "status": "queued"})
        if route == ("POST", "/v1/agent-runs/r-1/cancel"):
            return self.ok({**self.run, "status": "cancelled"})
        if route == ("GET", "/v1/agent-runs/r-1/events"):
            after = int(request.headers.get("last-event-id", 0))
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=b"".join(self.events[after:]),
            )
        return api_error(404, "not_found", f"no route {route}")

    @staticmethod
    def ok(data: Any, **extra: Any) -> httpx.Response:
        return httpx.Response(200, json={"data": data, **extra})

    def last(self, method: str, path: str) -> httpx.Request:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)][-1]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()

    def make_client(base_url: str | None, api_key: str | None) -> AgentRunsClient:
        return AgentRunsClient(
            base_url=base_url or "http://test",
            api_key=api_key or "key",
            transport=httpx.MockTransport(fake),
            reconnect=ReconnectPolicy(attempts=1, initial_delay=0, max_delay=0),
        )

    monkeypatch.setattr(cli, "make_client", make_client)
    return fake


def invoke(*args: str, input: str | None = None) -> Any:
    return runner.invoke(cli.app, list(args), input=input)


# -- agents -----------------------------------------------------------------------------


def test_agents_create_from_yaml_prints_only_the_id(server: FakeServer, tmp_path: Path) -> None:
    spec = tmp_path / "agent.yaml"
    spec.write_text("name: greeter\ninstructions: Greet {{name}}\nvars:\n  name: friend\n")
    result = invoke("agents", "create", "-f", str(spec), "--api-key", "k-cli")
    assert result.exit_code == 0, result.output
    assert result.stdout == "a-2\n"
    request = server.last("POST", "/v1/agents")
    assert json.loads(request.content) == {
        "name": "greeter",
        "instructions": "Greet {{name}}",
        "vars": {"name": "friend"},
    }
    assert request.headers["authorization"] == "Bearer k-cli"


def test_agents_create_reads_json_from_stdin(server: FakeServer) -> None:
    result = invoke("agents", "create", "-f", "-", input='{"name": "j", "model": "test"}')
    assert result.exit_code == 0, result.output
    assert json.loads(server.last("POST", "/v1/agents").content) == {"name": "j", "model": "test"}


@pytest.mark.parametrize("content", ["- just\n- a list\n", "name: [unclosed\n"])
def test_agents_create_rejects_a_bad_file(server: FakeServer, tmp_path: Path, content) -> None:
    spec = tmp_path / "agent.yaml"
    spec.write_text(content)
    result = invoke("agents", "create", "-f", str(spec))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert server.requests == []


def test_agents_list_and_show(server: FakeServer) -> None:
    listed = invoke("agents", "list")
    assert listed.exit_code == 0, listed.output
    assert "a-1" in listed.stdout and "greeter" in listed.stdout
    shown = invoke("agents", "show", "a-1")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == server.agents[0]


# -- runs -------------------------------------------------------------------------------


def test_run_prints_the_run_id(server: FakeServer) -> None:
    result = invoke("run", "a-1", "--var", "name=Ada", "--var", "mood=a=b", "-m", "hi")
    assert result.exit_code == 0, result.output
    assert result.stdout == "r-1\n"
    assert json.loads(server.last("POST", "/v1/agent-runs").content) == {
        "agent_id": "a-1",
        "vars": {"name": "Ada", "mood": "a=b"},
        "message": "hi",
    }


def test_run_rejects_a_var_without_a_value(server: FakeServer) -> None:
    result = invoke("run", "a-1", "--var", "name")
    assert result.exit_code == 2
    assert "NAME=VALUE" in result.stderr
    assert server.requests == []


def test_run_follow_streams_text_and_ends_with_the_status(server: FakeServer) -> None:
    server.finish("completed", "Hello", ", ", "Ada!")
    result = invoke("run", "a-1", "--var", "name=Ada", "--follow")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello, Ada!\n"
    assert "get_time" in result.stderr and "12:00" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("completed")


def test_run_follow_exits_1_when_the_run_fails(server: FakeServer) -> None:
    server.finish("failed", "Hel", error={"type": "model_error", "message": "provider down"})
    result = invoke("run", "a-1", "--var", "name=Ada", "--follow")
    assert result.exit_code == 1
    assert "failed: model_error: provider down" in result.stderr


def test_run_follow_json_prints_one_event_per_line(server: FakeServer) -> None:
    server.finish("completed", "Hi")
    result = invoke("run", "a-1", "--var", "name=Ada", "--follow", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == list(range(1, len(server.events) + 1))
    assert lines[-1]["type"] == "run.completed"


def test_api_errors_are_one_line_without_traceback(server: FakeServer) -> None:
    result = invoke("run", "a-1")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: validation_error: missing template vars",
        'error: details: ["name"]',
    ]
    missing = invoke("agents", "show", "nope")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: not_found: ")


def test_unreachable_server_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(
        cli,
        "make_client",
        lambda base_url, api_key: AgentRunsClient(
            base_url="http://test", api_key="key", transport=httpx.MockTransport(refuse)
        ),
    )
    result = invoke("runs", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "connection refused" in result.stderr
    assert "Traceback" not in result.output


def test_runs_list_passes_filters(server: FakeServer) -> None:
    result = invoke("runs", "list", "--status", "queued", "--agent", "a-1", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert "r-1" in result.stdout and "queued" in result.stdout
    params = server.last("GET", "/v1/agent-runs").url.params
    assert (params["status"], params["agent_id"], params["limit"]) == ("queued", "a-1", "5")


def test_runs_show_and_cancel(server: FakeServer) -> None:
    shown = invoke("runs", "show", "r-1")
    assert json.loads(shown.stdout)["id"] == "r-1"
    cancelled = invoke("runs", "cancel", "r-1")
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout == "cancelled\n"


def test_runs_continue_follow_shows_only_the_new_turn(server: FakeServer) -> None:
    server.finish("completed", "first answer")
    server.next_turn = ["second ", "answer"]
    result = invoke("runs", "continue", "r-1", "-m", "again", "--follow")
    assert result.exit_code == 0, result.output
    assert result.stdout == "second answer\n"
    assert json.loads(server.last("PUT", "/v1/agent-runs/r-1").content) == {"message": "again"}


# -- operator commands ------------------------------------------------------------------


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> Callable[..., types.SimpleNamespace]:
    """Installs a stand-in for `agentruns.<name>` (admin, service) that records its calls."""

    def install(name: str, **functions: Any) -> types.SimpleNamespace:
        calls = types.SimpleNamespace(log=[])
        module = types.ModuleType(f"agentruns.{name}")
        for attr, result in functions.items():

            def function(*args: Any, _attr: str = attr, _result: Any = result, **kwargs: Any):
                calls.log.append((_attr, args, kwargs))
                return _result

            setattr(module, attr, function)
        monkeypatch.setitem(sys.modules, f"agentruns.{name}", module)
        monkeypatch.setattr(agentruns, name, module, raising=False)
        return calls

    return install


def test_keys_create_prints_only_the_key(fake_module) -> None:
    calls = fake_module("admin", create_api_key="ar_secret")
    result = invoke("keys", "create", "--project", "acme")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ar_secret\n"
    ((name, args, kwargs),) = calls.log
    assert name == "create_api_key" and kwargs == {"project": "acme"}
    assert isinstance(args[0], Settings)


def test_keys_list_and_revoke(fake_module) -> None:
    keys = [
        {"id": "k1", "prefix": "ar_abc", "project": "acme", "created_at": "t", "revoked_at": None}
    ]
    fake_module("admin", list_api_keys=keys, revoke_api_key=False)
    listed = invoke("keys", "list")
    assert listed.exit_code == 0, listed.output
    assert "ar_abc" in listed.stdout and "acme" in listed.stdout
    revoked = invoke("keys", "revoke", "k9")
    assert revoked.exit_code == 1
    assert revoked.stderr == "error: no such key: k9\n"


def test_serve_and_worker_hand_over_to_the_service(fake_module) -> None:
    calls = fake_module("service", serve=None, run_worker=None, migrate=None)
    assert invoke("serve", "--port", "9001", "--no-worker").exit_code == 0
    assert invoke("worker", "--no-migrate").exit_code == 0
    assert invoke("serve", "--no-migrate").exit_code == 0
    assert invoke("migrate").exit_code == 0
    (serve, worker, serve_again, migrate) = calls.log
    assert serve[0] == "serve"
    assert serve[2] == {
        "host": "127.0.0.1",
        "port": 9001,
        "with_worker": False,
        "run_migrations": True,
    }
    assert worker[0] == "run_worker" and worker[2] == {"run_migrations": False}
    assert serve_again[2]["run_migrations"] is False and serve_again[2]["with_worker"] is True
    assert migrate[0] == "migrate" and isinstance(migrate[1][0], Settings)
