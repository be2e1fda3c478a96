"""Claims on client-side tool calls against a real server: the claim API's answers, and the
SDK running each handler once when several processes (or retried webhook deliveries) are
attached to the same paused run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import pytest

from agentruns.client import AgentRunsClient, AsyncAgentRunsClient, ToolHandlerError
from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer
from e2e.conftest import Api
from e2e.test_bad_input import other_project_key
from e2e.test_sdk_tools import LOOKUP, lookup_calls

HANDLER_S = 1.0


def paused(api: Api, fake_model: FakeServer, *turns: dict[str, Any]) -> dict[str, Any]:
    """A run of a lookup agent, waiting for the first of `turns`' client-side calls."""
    fake_model.script(*turns, {"text": "all answered"})
    agent = api.agent(prompt="look things up", tools=[LOOKUP])
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    return api.wait(run["id"], lambda r: r["status"] in ("awaiting_tool_calls", "failed"))


class SlowHandlers:
    """A slow lookup, sync and async, counting how often each word was looked up."""

    def __init__(self) -> None:
        self.words: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, args: dict[str, Any]) -> str:
        with self._lock:
            self.words[args["word"]] += 1
        return f"{args['word']}!"

    async def lookup(self, args: dict[str, Any], agent_id: str, run_id: str) -> str:
        await asyncio.sleep(HANDLER_S)
        return self._count(args)

    def lookup_sync(self, args: dict[str, Any], agent_id: str, run_id: str) -> str:
        time.sleep(HANDLER_S)
        return self._count(args)


def claim(api: Api, run_id: str, call_id: str, claimant: str, **extra: Any) -> Any:
    url = f"/v1/agent-runs/{run_id}/tool-calls/{call_id}/claim"
    return api.call("POST", url, json={"claimant": claimant, **extra})


def test_the_claim_api(server: ServerProcess, api: Api, fake_model: FakeServer) -> None:
    run = paused(api, fake_model, lookup_calls("a", "b", "c"))
    run_id = run["id"]

    first = claim(api, run_id, "call-a", "p1")
    assert first.status_code == 200, first.text
    held = first.json()["data"]
    assert held["tool_call_id"] == "call-a" and held["claimant"] == "p1"
    # Claims stay out of the run object (and so out of events and webhooks).
    before = api.ok("GET", f"/v1/agent-runs/{run_id}")
    assert [sorted(c) for c in before["pending_tool_calls"]] == [["arguments", "id", "name"]] * 3
    assert before["updated_at"] == run["updated_at"]

    # Held by another: 409 saying until when, and nothing changes.
    taken = claim(api, run_id, "call-a", "p2", lease_s=5)
    assert taken.status_code == 409
    error = taken.json()["error"]
    assert error["type"] == "conflict" and held["claimed_until"][:19] in error["message"]
    assert error["details"] == {"reason": "claimed", "claimed_until": held["claimed_until"]}
    assert api.ok("GET", f"/v1/agent-runs/{run_id}") == before
    # The holder re-claiming extends its lease.
    extended = claim(api, run_id, "call-a", "p1", lease_s=600)
    assert extended.status_code == 200
    assert extended.json()["data"]["claimed_until"] > held["claimed_until"]

    # An expired claim can be taken over.
    assert claim(api, run_id, "call-b", "p1", lease_s=1).status_code == 200
    assert claim(api, run_id, "call-b", "p2").status_code == 409
    time.sleep(1.1)
    assert claim(api, run_id, "call-b", "p2").json()["data"]["claimant"] == "p2"

    # Anyone may answer, claimed or not; an answered call can't be claimed.
    answer = {"tool_responses": [{"tool_call_id": "call-a", "output": "A"}]}
    api.ok("POST", f"/v1/agent-runs/{run_id}/tool-responses", json=answer)
    answered = claim(api, run_id, "call-a", "p1")
    assert answered.status_code == 409 and answered.json()["error"]["details"]["reason"] == (
        "answered"
    )
    assert claim(api, run_id, "nope", "p1").status_code == 422

    # Bad bodies, other projects, unknown runs.
    for body in [
        {"claimant": ""},
        {"claimant": "x" * 101},
        {"claimant": "p1", "lease_s": 0},
        {"claimant": "p1", "lease_s": 3601},
        {"claimant": "p1", "extra": 1},
    ]:
        url = f"/v1/agent-runs/{run_id}/tool-calls/call-c/claim"
        assert api.call("POST", url, json=body).status_code == 422, body
    other = Api(server, other_project_key(server))
    assert claim(other, run_id, "call-c", "p1").status_code == 404
    assert claim(api, "no-such-run", "call-c", "p1").status_code == 404
    after = api.ok("GET", f"/v1/agent-runs/{run_id}")
    assert [c["id"] for c in after["pending_tool_calls"]] == ["call-b", "call-c"]

    # Once the run no longer waits: 409.
    rest = {"tool_responses": [{"tool_call_id": i, "output": "x"} for i in ("call-b", "call-c")]}
    api.ok("POST", f"/v1/agent-runs/{run_id}/tool-responses", json=rest)
    late = claim(api, run_id, "call-c", "p1")
    assert late.status_code == 409 and late.json()["error"]["details"]["reason"] in (
        "answered",
        "not_waiting",
    )
    assert api.wait(run_id)["last_agent_message"] == "all answered"


async def test_clients_attached_at_once_run_each_handler_once(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    run = paused(api, fake_model, lookup_calls("x", "y", "z"), lookup_calls("u", "v"))
    handlers = SlowHandlers()

    def sync_client() -> dict[str, Any]:
        with AgentRunsClient(server.url, server.api_key) as client:
            client.set_tools({"lookup": handlers.lookup_sync})
            return client.execute_agent(resume_run_id=run["id"])

    started = time.monotonic()
    async with AsyncAgentRunsClient(server.url, server.api_key) as client:
        client.set_tools({"lookup": handlers.lookup})
        # Two runners on one client (two tasks) and one in another "process" (a thread).
        results = await asyncio.gather(
            client.execute_agent(resume_run_id=run["id"]),
            client.execute_agent(resume_run_id=run["id"]),
            asyncio.to_thread(sync_client),
        )
    assert [r["last_agent_message"] for r in results] == ["all answered"] * 3
    assert handlers.words == Counter({"x": 1, "y": 1, "z": 1, "u": 1, "v": 1})
    assert time.monotonic() - started < 15


async def test_a_webhook_delivered_twice_at_once_runs_each_handler_once(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    run = paused(api, fake_model, lookup_calls("w1", "w2"), lookup_calls("w3"))
    handlers = SlowHandlers()
    async with AsyncAgentRunsClient(server.url, server.api_key) as client:
        client.set_tools({"lookup": handlers.lookup})
        delivery = {"type": "run.awaiting_tool_calls", "data": run}
        both = await asyncio.gather(
            client.process_webhook_tools(delivery, post=True),
            client.process_webhook_tools(delivery, post=True),
        )
        assert sorted(r["tool_call_id"] for r in both[0] + both[1]) == ["call-w1", "call-w2"]

    # The sync client, from two threads, on the second pause.
    second = api.wait(
        run["id"], lambda r: [c["id"] for c in r["pending_tool_calls"]] == ["call-w3"]
    )
    with AgentRunsClient(server.url, server.api_key) as sync:
        sync.set_tools({"lookup": handlers.lookup_sync})
        delivery = {"type": "run.awaiting_tool_calls", "data": second}
        threads = [
            threading.Thread(
                target=sync.process_webhook_tools, args=(delivery,), kwargs={"post": True}
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert api.wait(run["id"])["last_agent_message"] == "all answered"
    assert handlers.words == Counter({"w1": 1, "w2": 1, "w3": 1})


async def test_a_dead_claimants_call_is_run_once_its_lease_ends(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    run = paused(api, fake_model, lookup_calls("d1", "d2"))
    # A process claimed d1 and died: nobody renews its claim.
    assert claim(api, run["id"], "call-d1", "dead", lease_s=2).status_code == 200
    handlers = SlowHandlers()
    started = time.monotonic()
    async with AsyncAgentRunsClient(server.url, server.api_key) as client:
        client.set_tools({"lookup": handlers.lookup})
        final = await client.run_agent(resume_run_id=run["id"])
    assert final == "all answered"
    assert handlers.words == Counter({"d1": 1, "d2": 1})
    assert time.monotonic() - started >= 2


async def test_a_claim_is_renewed_while_the_handler_runs_and_freed_when_it_raises(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    run = paused(api, fake_model, lookup_calls("slow"))
    refusals: list[int] = []

    async def slow_then_fail(args: dict[str, Any], agent_id: str, run_id: str) -> str:
        # Longer than the 1.5 s lease: only the renewals keep others out.
        for _ in range(3):
            await asyncio.sleep(1)
            refused = await asyncio.to_thread(claim, api, run_id, "call-slow", "other")
            refusals.append(refused.status_code)
        raise RuntimeError("out of luck")

    async with AsyncAgentRunsClient(server.url, server.api_key, claim_lease_s=1.5) as client:
        with pytest.raises(ToolHandlerError):
            await client.run_agent(
                resume_run_id=run["id"],
                tools={"lookup": slow_then_fail},
                raise_on_tool_error=True,
            )
    assert refusals == [409, 409, 409]
    # The failed call's claim was cut short, so a re-attach soon after can run it.
    await asyncio.sleep(1.1)
    assert claim(api, run["id"], "call-slow", "other", lease_s=1).status_code == 200
