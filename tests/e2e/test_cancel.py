"""Cancel a queued run and an in-progress run (its in-flight model call is abandoned)."""

from __future__ import annotations

import time

from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer
from e2e.conftest import Api
from e2e.sse_reader import read_events


def test_cancel_in_progress_run_stops_it(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script({"text": "too late", "first_token_delay_s": 5})
    agent = api.agent(prompt="slow")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    api.wait(run["id"], lambda r: r["status"] == "in_progress")
    while not fake_model.requests():
        time.sleep(0.02)

    assert fake_model.state.in_flight.stats()["in_flight"] == 1
    cancelled = api.ok("POST", f"/v1/agent-runs/{run['id']}/cancel")
    assert cancelled["status"] == "cancelled" and cancelled["completed_at"]
    # The worker hangs up on the model at once, not when the reply would have come (5 s).
    deadline = time.monotonic() + 2
    while fake_model.state.in_flight.stats()["in_flight"]:
        assert time.monotonic() < deadline, "the cancelled run's model call is still open"
        time.sleep(0.02)

    # The worker is free at once: a new run completes while the cancelled call would still wait.
    other = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"], "message": "quick"})
    assert api.wait(other["id"], timeout_s=4)["status"] == "completed"

    final = api.ok("GET", f"/v1/agent-runs/{run['id']}")
    assert final["status"] == "cancelled" and final["results"] == []
    events = list(read_events(server.url, run["id"], server.api_key))
    assert [e.type for e in events][-2:] == ["run.status", "run.cancelled"]

    again = api.call("POST", f"/v1/agent-runs/{run['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict"


def test_cancel_queued_run(tmp_path, fake_model: FakeServer) -> None:  # type: ignore[no-untyped-def]
    from e2e.conftest import server_env

    # No worker: the run stays queued until cancelled.
    with ServerProcess(tmp_path, env=server_env(fake_model), args=["serve", "--no-worker"]) as srv:
        api = Api(srv)
        agent = api.agent(prompt="never")
        run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
        assert api.ok("POST", f"/v1/agent-runs/{run['id']}/cancel")["status"] == "cancelled"
        statuses = [
            e.data["status"]
            for e in read_events(srv.url, run["id"], srv.api_key)
            if e.type == "run.status"
        ]
        assert statuses == ["queued", "cancelled"]
    assert fake_model.requests() == []
