"""Webhooks end to end: real servers POST to a real receiver on 127.0.0.1.

Signed per Standard Webhooks (checked with the `standardwebhooks` library itself),
retried with the same `webhook-id`, delivered across a `kill -9`, enough on their own
to drive client-side tools, and refused for private targets when the guard is on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentruns.client import AsyncAgentRunsClient
from agentruns.client.webhooks import verify_webhook
from agentruns.testing import fake_openai
from agentruns.testing.process import ServerProcess, free_port
from agentruns.testing.server import FakeServer, start_in_thread
from e2e.conftest import Api, server_env

LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look a word up in the caller's dictionary.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
}
MSG = {"message": "define x"}
# Retries in tenths of a second instead of minutes.
FAST_RETRIES = {"AGENTRUNS_WEBHOOK_RETRY_SCHEDULE": "[0.3, 0.3, 0.5, 1, 1, 2, 2]"}


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    # What the receiver did with it (e.g. the run as GET showed it at that moment).
    note: Any = None

    @property
    def event(self) -> dict[str, Any]:
        return dict(orjson.loads(self.body))


Hook = Callable[[Received], Awaitable[Any]]


class Receiver:
    """A webhook receiver: records every request, answers from a script (then 200)."""

    def __init__(self, hook: Hook | None = None) -> None:
        self.received: list[Received] = []
        self.answers: deque[tuple[int, dict[str, str]]] = deque()
        self.hook = hook
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        got = Received(time.time(), request.url.path, dict(request.headers), await request.body())
        if self.hook is not None:
            got.note = await self.hook(got)
        self.received.append(got)
        status, headers = self.answers.popleft() if self.answers else (200, {})
        return Response(status_code=status, headers=headers)

    def of_run(self, run_id: str) -> list[Received]:
        return [r for r in self.received if r.event["data"]["id"] == run_id]

    def wait_for(self, count: int, run_id: str | None = None, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.received if run_id is None else self.of_run(run_id)
            if len(got) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"{len(self.received)} webhooks arrived, not {count}")


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, FakeServer]]:
    hooks = Receiver()
    with start_in_thread(hooks.app) as running:
        yield hooks, running


@pytest.fixture(scope="module")
def model() -> Iterator[FakeServer]:
    with start_in_thread(fake_openai.create_app()) as server:
        yield server


@pytest.fixture(scope="module")
def hooks_server(tmp_path_factory: pytest.TempPathFactory, model: FakeServer) -> Iterator[Api]:
    """One server for the tests that do not kill it: webhooks retried within seconds."""
    workdir = tmp_path_factory.mktemp("webhooks")
    with ServerProcess(workdir, env={**server_env(model), **FAST_RETRIES}) as process:
        yield Api(process)


@pytest.fixture
def api(hooks_server: Api, model: FakeServer) -> Api:
    model.reset()
    return hooks_server


def deliveries(api: Api, run_id: str) -> list[dict[str, Any]]:
    return list(api.ok("GET", f"/v1/agent-runs/{run_id}/webhook-deliveries"))


def one(status: str) -> Callable[[list[dict[str, Any]]], bool]:
    """The run has one delivery, and it is in `status`."""
    return lambda found: len(found) == 1 and found[0]["status"] == status


def wait_deliveries(
    api: Api, run_id: str, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 15
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = deliveries(api, run_id)
        if done(found):
            return found
        time.sleep(0.05)
    raise AssertionError(f"deliveries of {run_id} did not get there: {found}")


def test_every_webhook_arrives_once_signed_and_as_the_run_was(api: Api, model: FakeServer) -> None:
    async def snapshot(got: Received) -> Any:
        # The run as GET shows it while the receiver holds the webhook.
        async with httpx.AsyncClient(base_url=api.base, headers=api.headers) as http:
            run_id = got.event["data"]["id"]
            return (await http.get(f"/v1/agent-runs/{run_id}")).json()["data"]

    hooks = Receiver(snapshot)
    with start_in_thread(hooks.app) as running:
        base = running.url
        with_default = api.agent(callback_url=f"{base}/agent-default", tools=[LOOKUP])
        plain = api.agent()

        # The run's own callback_url wins over the agent's default.
        own = api.ok(
            "POST",
            "/v1/agent-runs",
            json={"agent_id": with_default["id"], "message": "hi", "callback_url": f"{base}/own"},
        )
        assert api.wait(own["id"])["status"] == "completed"

        model.script({"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"word": "x"}}]})
        paused = api.ok("POST", "/v1/agent-runs", json={"agent_id": with_default["id"]} | MSG)
        hooks.wait_for(1, paused["id"])
        api.ok("POST", f"/v1/agent-runs/{paused['id']}/cancel")

        model.script({"error": {"status": 400, "message": "no such model"}})
        failing = api.ok(
            "POST",
            "/v1/agent-runs",
            json={"agent_id": plain["id"], "message": "hi", "callback_url": f"{base}/failed"},
        )
        assert api.wait(failing["id"])["status"] == "failed"

        quiet = api.ok("POST", "/v1/agent-runs", json={"agent_id": plain["id"], "message": "hi"})
        api.wait(quiet["id"])
        hooks.wait_for(4)
        time.sleep(0.5)  # anything sent twice would arrive by now

    secret = api.ok("GET", "/v1/webhook-secret")["secret"]
    assert secret.startswith("whsec_")
    seen = [(r.path, r.event["type"], r.event["data"]["id"]) for r in hooks.received]
    assert seen == [
        ("/own", "run.completed", own["id"]),
        ("/agent-default", "run.awaiting_tool_calls", paused["id"]),
        ("/agent-default", "run.cancelled", paused["id"]),
        ("/failed", "run.failed", failing["id"]),
    ]
    for got in hooks.received:
        event = Webhook(secret).verify(got.body, got.headers)
        assert event == {"type": event["type"], "data": got.note}
        assert event["data"]["status"] == event["type"].removeprefix("run.")
    assert len({got.headers["webhook-id"] for got in hooks.received}) == 4
    assert hooks.of_run(paused["id"])[0].event["data"]["pending_tool_calls"][0]["id"] == "c1"

    [completed] = deliveries(api, own["id"])
    assert completed["id"] == hooks.received[0].headers["webhook-id"]
    assert completed["status"] == "delivered" and completed["type"] == "run.completed"
    assert [(a["attempt"], a["status_code"], a["error"]) for a in completed["attempts"]] == [
        (1, 200, None)
    ]
    assert deliveries(api, quiet["id"]) == []


def test_client_side_tools_over_webhooks_only(api: Api, model: FakeServer) -> None:
    """The receiver alone drives the run: it answers the tools, then gets the result."""
    secret = api.ok("GET", "/v1/webhook-secret")["secret"]
    finished = threading.Event()

    def lookup(args: dict[str, Any], _agent_id: str, _run_id: str) -> str:
        return f"{args['word']} means something"

    async def receive(got: Received) -> Any:
        event = verify_webhook(got.body, got.headers, secret)
        if event["type"] == "run.awaiting_tool_calls":
            key = api.headers["Authorization"].removeprefix("Bearer ")
            async with AsyncAgentRunsClient(api.base, key) as sdk:
                return await sdk.process_webhook_tools(event, {"lookup": lookup}, post=True)
        finished.set()
        return None

    model.script(
        {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"word": "cat"}}]},
        {"tool_calls": [{"id": "c2", "name": "lookup", "arguments": {"word": "dog"}}]},
    )
    hooks = Receiver(receive)
    with start_in_thread(hooks.app) as running:
        agent = api.agent(prompt="define cat, then dog", tools=[LOOKUP])
        run = api.ok(
            "POST", "/v1/agent-runs", json={"agent_id": agent["id"], "callback_url": running.url}
        )
        assert finished.wait(20), "no terminal webhook"
    types = [got.event["type"] for got in hooks.received]
    assert types == ["run.awaiting_tool_calls", "run.awaiting_tool_calls", "run.completed"]
    assert [got.note for got in hooks.received[:2]] == [
        [{"tool_call_id": "c1", "output": "cat means something"}],
        [{"tool_call_id": "c2", "output": "dog means something"}],
    ]
    final = hooks.received[-1].event["data"]
    assert final["id"] == run["id"] and final["status"] == "completed"
    outputs = [r["output"] for r in final["results"] if r["type"] == "tool_output"]
    assert outputs == ["cat means something", "dog means something"]
    assert final["last_agent_message"] == "echo: define cat, then dog"


def test_receiver_down_then_up_is_retried_with_the_same_id(api: Api) -> None:
    port = free_port()
    agent = api.agent()
    run = api.ok(
        "POST",
        "/v1/agent-runs",
        json={
            "agent_id": agent["id"],
            "message": "hi",
            "callback_url": f"http://127.0.0.1:{port}/",
        },
    )
    refused = wait_deliveries(api, run["id"], lambda d: len(d) == 1 and len(d[0]["attempts"]) >= 2)
    assert all("connection failed" in a["error"] for a in refused[0]["attempts"])
    assert refused[0]["status"] == "pending" and refused[0]["next_attempt_at"] is not None
    hooks = Receiver()
    with start_in_thread(hooks.app, port=port):
        hooks.wait_for(1)
    [delivery] = wait_deliveries(api, run["id"], one("delivered"))
    assert hooks.received[0].headers["webhook-id"] == delivery["id"]
    attempts = delivery["attempts"]
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert attempts[-1]["status_code"] == 200 and attempts[-1]["error"] is None
    assert all(a["status_code"] is None and a["next_attempt_at"] for a in attempts[:-1])


def test_5xx_and_429_are_retried_other_4xx_end_it_and_redeliver_sends_again(
    api: Api, receiver: tuple[Receiver, FakeServer]
) -> None:
    hooks, running = receiver
    agent = api.agent()

    def run_with(*answers: tuple[int, dict[str, str]]) -> tuple[str, list[Received]]:
        hooks.received.clear()
        hooks.answers.extend(answers)
        body = {"agent_id": agent["id"], "message": "hi", "callback_url": running.url}
        run_id = api.ok("POST", "/v1/agent-runs", json=body)["id"]
        hooks.wait_for(len(answers) + 1, timeout_s=10)
        return run_id, list(hooks.received)

    run_id, got = run_with((500, {}))
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    assert got[0].body == got[1].body
    [delivery] = wait_deliveries(api, run_id, one("delivered"))
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]

    run_id, got = run_with((429, {"Retry-After": "1"}))
    assert got[1].at - got[0].at >= 0.95  # the schedule says 0.3 s; the receiver said 1 s
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    [delivery] = wait_deliveries(api, run_id, one("delivered"))
    assert [a["status_code"] for a in delivery["attempts"]] == [429, 200]

    for status, headers in ((410, {}), (302, {"Location": "http://169.254.169.254/"})):
        hooks.received.clear()
        hooks.answers.append((status, headers))
        body = {"agent_id": agent["id"], "message": "hi", "callback_url": running.url}
        run_id = api.ok("POST", "/v1/agent-runs", json=body)["id"]
        [delivery] = wait_deliveries(api, run_id, one("failed"))
        assert [a["status_code"] for a in delivery["attempts"]] == [status]
        assert delivery["attempts"][0]["next_attempt_at"] is None
    assert "redirects are not followed" in delivery["attempts"][0]["error"]
    time.sleep(0.5)
    assert len(hooks.received) == 1  # no retry, and the redirect was not followed

    again = api.ok("POST", f"/v1/webhook-deliveries/{delivery['id']}/redeliver")
    assert again["status"] in ("pending", "sending", "delivered")
    hooks.wait_for(2)
    assert hooks.received[1].headers["webhook-id"] == delivery["id"]
    assert hooks.received[1].body == hooks.received[0].body
    [delivery] = wait_deliveries(api, run_id, one("delivered"))
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 200]
    missing = api.call("POST", "/v1/webhook-deliveries/nope/redeliver")
    assert missing.status_code == 404


def test_kill_9_before_the_send_is_recorded_loses_no_webhook(
    tmp_path: Path, model: FakeServer
) -> None:
    """Two webhooks are committed but not delivered when the server dies: one waits for
    a retry (its receiver is down), one is being sent (the receiver holds the request).
    After the restart both arrive."""
    model.reset()
    got_first = threading.Event()
    release = threading.Event()

    async def hold_the_first(got: Received) -> None:
        if not got_first.is_set():
            got_first.set()
            await asyncio.to_thread(release.wait, 10)

    holding = Receiver(hold_the_first)
    down_port = free_port()
    env = {**server_env(model), **FAST_RETRIES, "AGENTRUNS_WEBHOOK_TIMEOUT_S": "1"}
    server = ServerProcess(tmp_path, env=env).start()
    try:
        api = Api(server)
        agent = api.agent()
        body = {"agent_id": agent["id"], "message": "hi"}
        down_url = f"http://127.0.0.1:{down_port}/"
        waiting = api.ok("POST", "/v1/agent-runs", json={**body, "callback_url": down_url})
        wait_deliveries(api, waiting["id"], lambda d: len(d) == 1 and len(d[0]["attempts"]) >= 1)
        with start_in_thread(holding.app) as running:
            sending = api.ok("POST", "/v1/agent-runs", json={**body, "callback_url": running.url})
            assert got_first.wait(10)
            server.kill()
            release.set()
            late = Receiver()
            with start_in_thread(late.app, port=down_port):
                server.start()
                holding.wait_for(2)
                late.wait_for(1)
        first, second = holding.received[:2]
        assert first.body == second.body
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        [delivery] = wait_deliveries(api, sending["id"], one("delivered"))
        assert delivery["id"] == first.headers["webhook-id"]
        assert delivery["attempts"][0]["status_code"] is None
        assert "dispatcher stopped" in delivery["attempts"][0]["error"]
        assert delivery["attempts"][-1]["status_code"] == 200
        [delivery] = wait_deliveries(api, waiting["id"], one("delivered"))
        assert late.received[0].headers["webhook-id"] == delivery["id"]
        assert "connection failed" in delivery["attempts"][0]["error"]
    finally:
        server.stop()


def test_private_targets_are_refused_when_the_guard_is_on(
    tmp_path: Path, model: FakeServer
) -> None:
    env = {**server_env(model), "AGENTRUNS_WEBHOOK_ALLOW_PRIVATE": "false"}
    with ServerProcess(tmp_path, env=env) as server:
        api = Api(server)
        agent = api.agent()
        for url, why in (
            ("http://127.0.0.1:8080/hook", "loopback"),
            ("http://[::ffff:10.0.0.1]/hook", "private"),
            ("http://169.254.169.254/latest/meta-data/", "metadata"),
            ("http://localhost/hook", "loopback"),
        ):
            body = {"agent_id": agent["id"], "message": "hi", "callback_url": url}
            refused = api.call("POST", "/v1/agent-runs", json=body)
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert why in error["message"] and "AGENTRUNS_WEBHOOK_ALLOW_PRIVATE" in error["message"]
            assert error["details"][0]["field"] == "callback_url"
        # The agent's default is checked the same way when a run would use it.
        risky = api.agent(callback_url="http://10.1.2.3/hook")
        refused = api.call("POST", "/v1/agent-runs", json={"agent_id": risky["id"], **MSG})
        assert refused.status_code == 422
        assert "the agent's default callback_url" in refused.json()["error"]["message"]
        assert api.ok("GET", "/v1/agent-runs") == []

        first = api.ok("GET", "/v1/webhook-secret")
        assert first == api.ok("GET", "/v1/webhook-secret")
        rotated = api.ok("POST", "/v1/webhook-secret/rotate")
        assert rotated["secret"] != first["secret"] and rotated["secret"].startswith("whsec_")
        assert rotated["previous_secret_expires_at"] is not None
