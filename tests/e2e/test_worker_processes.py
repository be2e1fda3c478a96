"""Worker lifecycles across real processes: graceful shutdown, and API and workers split.

`agentruns serve` hands unfinished runs back to the queue when it is stopped
(SIGTERM) after a grace period; `agentruns serve --no-worker` plus separate
`agentruns worker` processes share one SQLite file, and the API streams the
events a worker process writes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer
from e2e.conftest import Api, server_env
from e2e.sse_reader import Event, read_events

# The servers of this module give running runs this long to finish on SIGTERM.
SHUTDOWN_GRACE_S = 4.0


@pytest.fixture
def server(tmp_path: Path, fake_model: FakeServer) -> Iterator[ServerProcess]:
    env = {**server_env(fake_model), "AGENTRUNS_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S)}
    with ServerProcess(tmp_path, env=env) as process:
        yield process


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


def wait_for_requests(fake: FakeServer, count: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while len(fake.requests()) < count:
        assert time.monotonic() < deadline, f"the model got {len(fake.requests())} requests"
        time.sleep(0.02)


def events_of(server: ServerProcess, run_id: str) -> list[Event]:
    assert server.api_key is not None
    events = list(read_events(server.url, run_id, server.api_key, timeout_s=10))
    assert [e.id for e in events] == list(range(1, len(events) + 1)), "event ids have gaps"
    return events


def statuses(events: list[Event]) -> list[str]:
    return [e.data["status"] for e in events if e.type == "run.status"]


def assert_completed_once(run: dict[str, Any], events: list[Event], text: str) -> None:
    """One assistant message, one `message.completed`, one terminal event, no gaps."""
    assert run["status"] == "completed", run
    assert run["last_agent_message"] == text
    assert run["results"] == [{"type": "message", "role": "assistant", "content": text}]
    types = [e.type for e in events]
    assert types.count("message.completed") == 1
    assert types.count("run.completed") == 1 and types[-1] == "run.completed"
    # What a reader keeps after honouring `message.discarded` is exactly the answer.
    kept: list[str] = []
    for event in events:
        if event.type == "message.discarded":
            kept.clear()
        elif event.type == "message.delta":
            kept.append(event.data["delta"])
    assert "".join(kept) == text


def stop_gracefully(server: ServerProcess) -> float:
    """SIGTERM and wait; the process must exit on its own, not by `stop()`'s SIGKILL fallback."""
    started = time.monotonic()
    server.stop(timeout_s=SHUTDOWN_GRACE_S + 8)
    elapsed = time.monotonic() - started
    assert server.process is not None
    # uvicorn re-raises the captured SIGTERM after its shutdown: 0 or -SIGTERM are both clean.
    assert server.process.returncode in (0, -signal.SIGTERM), server.logs()
    return elapsed


# --- graceful shutdown of `agentruns serve` -------------------------------------------------


def test_sigterm_lets_a_nearly_done_run_finish(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    text = words(20)
    fake_model.script({"text": text, "token_delay_s": 0.05})  # about 1 s of streaming
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": api.agent(prompt="hi")["id"]})
    wait_for_requests(fake_model, 1)
    time.sleep(0.3)

    elapsed = stop_gracefully(server)
    assert elapsed < SHUTDOWN_GRACE_S - 1, "the shutdown waited for more than the run"

    server.start()
    done = api.ok("GET", f"/v1/agent-runs/{run['id']}")
    events = events_of(server, run["id"])
    assert_completed_once(done, events, text)
    assert statuses(events) == ["queued", "in_progress", "completed"]
    assert "message.discarded" not in [e.type for e in events]
    assert len(fake_model.requests()) == 1


def test_sigterm_hands_a_long_run_back_and_it_completes_once_after_restart(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    # The first answer streams for ~10 s, longer than the grace period; the call made
    # again after the restart answers at once.
    fake_model.script({"text": words(40), "token_delay_s": 0.25}, {"text": "the short answer"})
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": api.agent(prompt="hi")["id"]})
    wait_for_requests(fake_model, 1)
    time.sleep(0.6)  # some deltas are committed

    elapsed = stop_gracefully(server)
    assert elapsed >= SHUTDOWN_GRACE_S - 0.5, "the run was not given its grace period"
    assert len(fake_model.requests()) == 1

    server.start()
    done = api.wait(run["id"], timeout_s=10)
    events = events_of(server, run["id"])
    assert_completed_once(done, events, "the short answer")
    # Handed back, not lost: straight to `queued` again (no lease expiry, no failure).
    assert statuses(events) == ["queued", "in_progress", "queued", "in_progress", "completed"]
    types = [e.type for e in events]
    handed_back = [i for i, e in enumerate(events) if e.type == "run.status"][2]
    assert types[handed_back - 1] == "message.discarded"
    assert "message.delta" in types[: handed_back - 1]
    assert done["error"] is None
    assert len(fake_model.requests()) == 2
    assert "re-queued" not in server.logs(), "the run was handed back by a lease expiry"


# --- API and worker in separate processes ---------------------------------------------------


@pytest.fixture
def split(tmp_path: Path, fake_model: FakeServer) -> Iterator[tuple[ServerProcess, Api, Path]]:
    """`agentruns serve --no-worker`; the test starts `agentruns worker` processes itself."""
    env = server_env(fake_model)
    with ServerProcess(tmp_path, env=env, args=["serve", "--no-worker"]) as api_process:
        yield api_process, Api(api_process), tmp_path


def start_worker(workdir: Path, fake: FakeServer) -> ServerProcess:
    """An `agentruns worker` process on the same workdir, so on the same SQLite file."""
    return ServerProcess(workdir, env=server_env(fake), args=["worker"]).start()


def test_separate_worker_process_executes_and_the_api_streams_its_events(
    split: tuple[ServerProcess, Api, Path], fake_model: FakeServer
) -> None:
    api_process, api, workdir = split
    text = words(30)
    fake_model.script({"text": text, "token_delay_s": 0.05})  # about 1.5 s of streaming
    agent = api.agent(prompt="hi")

    # No worker yet: the run waits in the queue.
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    time.sleep(0.5)
    assert api.ok("GET", f"/v1/agent-runs/{run['id']}")["status"] == "queued"
    assert fake_model.requests() == []

    worker = start_worker(workdir, fake_model)
    try:
        assert api_process.api_key is not None
        arrivals: list[tuple[float, Event]] = []
        for event in read_events(api_process.url, run["id"], api_process.api_key, timeout_s=15):
            arrivals.append((time.monotonic(), event))
        done = api.ok("GET", f"/v1/agent-runs/{run['id']}")
    finally:
        stop_gracefully(worker)

    events = [event for _, event in arrivals]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert_completed_once(done, events, text)
    assert statuses(events) == ["queued", "in_progress", "completed"]
    # Followed live, not replayed at the end: the deltas the worker process wrote
    # arrived spread over the streaming time, well before the terminal event.
    delta_times = [t for t, e in arrivals if e.type == "message.delta"]
    assert len(delta_times) >= 5
    assert arrivals[-1][0] - delta_times[0] > 0.8
    assert len(fake_model.requests()) == 1


def test_killed_worker_process_is_replaced_and_the_run_completes_once(
    split: tuple[ServerProcess, Api, Path], fake_model: FakeServer
) -> None:
    api_process, api, workdir = split
    fake_model.script({"text": words(80), "token_delay_s": 0.1}, {"text": "the second worker"})
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": api.agent(prompt="hi")["id"]})

    first = start_worker(workdir, fake_model)
    try:
        wait_for_requests(fake_model, 1)
        time.sleep(0.5)  # some deltas are committed
    finally:
        first.kill()
    assert first.process is not None and first.process.returncode == -signal.SIGKILL
    stuck = api.ok("GET", f"/v1/agent-runs/{run['id']}")
    assert stuck["status"] == "in_progress"

    second = start_worker(workdir, fake_model)
    try:
        # The dead worker's lease (2 s) expires; the new worker re-queues the run and resumes it.
        done = api.wait(run["id"], timeout_s=15)
    finally:
        stop_gracefully(second)

    events = events_of(api_process, run["id"])
    assert_completed_once(done, events, "the second worker")
    assert statuses(events) == ["queued", "in_progress", "queued", "in_progress", "completed"]
    assert "message.discarded" in [e.type for e in events]
    assert len(fake_model.requests()) == 2
