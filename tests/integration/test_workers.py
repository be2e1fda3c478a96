"""The workers registry on SQLite and PostgreSQL: heartbeats, reaping dead workers (their runs
and webhook attempts), the worker handing a run back on a database failure; and, on
PostgreSQL, the error mapping of a broken connection and the LISTEN connection reconnecting."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from agentruns.engine.executor import Executor
from agentruns.engine.presence import Presence, make_worker_id
from agentruns.engine.worker import Worker
from agentruns.errors import LeaseLost, StoreError
from agentruns.store import events, projects, queue, runs, tables, webhooks, workers
from agentruns.store.database import Database
from agentruns.store.execution import commit_step
from integration.store_helpers import make_agent, make_project, make_run

HOOK = "https://hooks.example.com/agentruns"


async def _register(db: Database, worker_id: str) -> None:
    await workers.register_worker(db, worker_id, hostname="host", pid=1, started_at=time.time())


async def _until(condition: Callable[[], Any], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _event_types(db: Database, run_id: str) -> list[str]:
    return [e.type for e in await events.list_events(db, run_id)]


async def test_register_heartbeat_and_unregister(db: Database) -> None:
    await _register(db, "w1")
    assert [w["id"] for w in await workers.list_workers(db)] == ["w1"]
    assert await workers.heartbeat_worker(db, "w1", hostname="h", pid=1, started_at=0) is True
    await workers.unregister_worker(db, "w1")
    assert await workers.list_workers(db) == []
    # A worker removed while alive (declared dead by mistake) registers again.
    assert await workers.heartbeat_worker(db, "w1", hostname="h", pid=1, started_at=0) is False
    assert [w["id"] for w in await workers.list_workers(db)] == ["w1"]


def test_worker_ids_fit_the_column_whatever_the_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "h" * 253)
    assert len(make_worker_id()) <= 64


async def test_a_dead_workers_runs_are_requeued_and_its_row_removed(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    mine = await make_run(db, project, agent["id"], "dead")
    other = await make_run(db, project, agent["id"], "alive")
    await _register(db, "dead")
    dead_lease, _ = await queue.claim_next_run(db, "dead", 300)
    await commit_step(db, dead_lease, events=[("message.delta", {"delta": "partial"})])
    await asyncio.sleep(0.3)
    await _register(db, "alive")
    alive_lease, _ = await queue.claim_next_run(db, "alive", 300)
    assert (dead_lease.run_id, alive_lease.run_id) == (mine["id"], other["id"])

    reaped = await workers.reap_dead_workers(db, dead_after_s=0.2, max_attempts=3)
    assert (reaped.workers, reaped.runs, reaped.deliveries) == (1, 1, 0)
    assert [w["id"] for w in await workers.list_workers(db)] == ["alive"]
    requeued = await runs.get_run(db, project, mine["id"])
    assert requeued["status"] == "queued"
    # The same path as an expired lease: readers drop the partial message.
    assert (await _event_types(db, mine["id"]))[-2:] == ["message.discarded", "run.status"]
    with pytest.raises(LeaseLost):  # the dead worker's lease is fenced out
        await commit_step(db, dead_lease, events=[("message.delta", {"delta": "zombie"})])
    assert (await runs.get_run(db, project, other["id"]))["status"] == "in_progress"
    # The next claim counts the lost attempt.
    _, row = await queue.claim_next_run(db, "alive", 300)
    assert row.id == mine["id"] and row.attempts == 2


async def test_a_dead_worker_fails_runs_out_of_attempts(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    await _register(db, "dead")
    await queue.claim_next_run(db, "dead", 300)
    await asyncio.sleep(0.3)
    reaped = await workers.reap_dead_workers(db, dead_after_s=0.2, max_attempts=1)
    assert reaped.runs == 1
    failed = await runs.get_run(db, project, run["id"])
    assert failed["status"] == "failed" and failed["error"]["type"] == "worker_lost"


async def test_a_dead_workers_webhook_attempts_are_made_again(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"], callback_url=HOOK)
    await runs.cancel_run(db, project, run["id"])  # enqueues the `run.cancelled` delivery
    await _register(db, "dead")
    (held,) = await webhooks.claim_due_deliveries(db, limit=5, lease_s=300, worker_id="dead")
    # Leased for 300 s: nobody else may take it...
    assert await webhooks.claim_due_deliveries(db, limit=5, lease_s=300) == []
    await asyncio.sleep(0.3)
    reaped = await workers.reap_dead_workers(db, dead_after_s=0.2, max_attempts=3)
    assert (reaped.workers, reaped.deliveries) == (1, 1)
    # ...until its dispatcher is found dead: then at once, with the lost attempt noted.
    (again,) = await webhooks.claim_due_deliveries(db, limit=5, lease_s=300, worker_id="w2")
    assert again.id == held.id and again.attempt == 2
    (delivery,) = await webhooks.list_run_deliveries(db, project, run["id"]) or []
    assert delivery["attempts"][0]["error"] == webhooks.LOST_ATTEMPT_ERROR


async def test_reapers_never_judge_themselves_or_the_living(db: Database) -> None:
    await _register(db, "me")
    await asyncio.sleep(0.3)
    await _register(db, "fresh")
    reaped = await workers.reap_dead_workers(db, dead_after_s=0.2, max_attempts=3, exclude="me")
    assert reaped.workers == 0
    assert {w["id"] for w in await workers.list_workers(db)} == {"me", "fresh"}


async def test_concurrent_reapers_reap_each_dead_worker_once(db_url: str) -> None:
    setup = Database(db_url)
    project = await make_project(setup)
    agent = await make_agent(setup, project)
    made = [await make_run(setup, project, agent["id"], f"r{i}") for i in range(4)]
    for i in range(2):
        await _register(setup, f"dead{i}")
        for _ in range(2):
            await queue.claim_next_run(setup, f"dead{i}", 300)
    await asyncio.sleep(0.3)
    reapers = [Database(db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(workers.reap_dead_workers(r, dead_after_s=0.2, max_attempts=3) for r in reapers)
        )
        assert sum(r.workers for r in results) == 2
        assert sum(r.runs for r in results) == 4
        for run in made:
            statuses = [
                e.data["status"]
                for e in await events.list_events(setup, run["id"])
                if e.type == "run.status"
            ]
            assert statuses == ["queued", "in_progress", "queued"]
    finally:
        for database in [*reapers, setup]:
            await database.close()


async def test_presence_heartbeats_reaps_a_dead_peer_and_leaves_on_stop(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    await _register(db, "ghost")
    await queue.claim_next_run(db, "ghost", 300)  # held for 5 minutes by a dead process
    presence = Presence(db, dead_after_s=0.4, max_attempts=3)
    await presence.start()
    try:

        async def requeued() -> bool:
            return (await runs.get_run(db, project, run["id"]))["status"] == "queued"

        started = time.monotonic()
        await _until(requeued, timeout_s=5)
        # It first heartbeats for a whole dead_after_s itself, then judges the others.
        assert 0.3 < time.monotonic() - started < 3
        assert [w["id"] for w in await workers.list_workers(db)] == [presence.worker_id]
    finally:
        await presence.stop()
    assert await workers.list_workers(db) == []


async def test_first_api_key_is_created_once_by_racing_processes(db_url: str) -> None:
    dbs = [Database(db_url) for _ in range(4)]
    try:
        keys = await asyncio.gather(*(projects.create_first_api_key(d) for d in dbs))
    finally:
        for database in dbs:
            await database.close()
    assert len([k for k in keys if k is not None]) == 1


# --- a database failure during a run: handed back, never failed -----------------------------


class FlakyDatabase(Database):
    """Fails the `fail_at`-th database access made by a run's own task, once.

    A run's task reads its agent first (the first access, before the agent loop; its
    conversation comes with the claim), then writes its steps (inside the loop).
    """

    def __init__(self, url: str, fail_at: int) -> None:
        super().__init__(url)
        self.fail_at = fail_at
        self.calls = 0

    def _maybe_fail(self) -> None:
        task = asyncio.current_task()
        if task is not None and (
            task.get_name().startswith("run-")
            # A step's write runs in a task of its own (so that cancelling the run spares it).
            or getattr(task.get_coro(), "__qualname__", "") == "Executor._commit.<locals>.write"
        ):
            self.calls += 1
            if self.calls == self.fail_at:
                raise StoreError("injected: the connection was lost")

    def read(self):  # type: ignore[no-untyped-def, override]
        self._maybe_fail()
        return super().read()

    def write(self, **options):  # type: ignore[no-untyped-def, override]
        self._maybe_fail()
        return super().write(**options)


@contextlib.asynccontextmanager
async def running_worker(db: Database) -> AsyncIterator[Worker]:
    async with httpx.AsyncClient() as http:
        executor = Executor(db, http=http, default_model="test")
        worker = Worker(db, executor, lease_s=30, poll_interval_s=0.05)
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.stop()
            await task


@pytest.mark.parametrize("fail_at", [1, 2], ids=["before-the-loop", "inside-the-loop"])
async def test_a_database_failure_mid_run_hands_the_run_back(db_url: str, fail_at: int) -> None:
    db = FlakyDatabase(db_url, fail_at)
    await db.start()
    try:
        project = await make_project(db)
        agent = await make_agent(db, project, model="test")
        run = await make_run(db, project, agent["id"])
        async with running_worker(db):

            async def finished() -> bool:
                return (await runs.get_run(db, project, run["id"]))["status"] not in (
                    "queued",
                    "in_progress",
                )

            await _until(finished)
        done = await runs.get_run(db, project, run["id"])
        assert done["status"] == "completed" and done["error"] is None, done
        statuses = [
            e.data["status"]
            for e in await events.list_events(db, run["id"])
            if e.type == "run.status"
        ]
        assert statuses == ["queued", "in_progress", "queued", "in_progress", "completed"]
        assert db.calls > fail_at  # it failed once, then went on
    finally:
        await db.close()


async def test_a_full_worker_takes_the_next_queued_run_as_soon_as_a_slot_frees(
    db: Database,
) -> None:
    """A backlog is worked through at the runs' pace, not at the poll interval's."""
    project = await make_project(db)
    agent = await make_agent(db, project, model="test")
    backlog = [await make_run(db, project, agent["id"], f"run {i}") for i in range(6)]
    async with httpx.AsyncClient() as http:
        executor = Executor(db, http=http, default_model="test")
        # No poll would come within the test: only a freed slot can start the next run.
        worker = Worker(db, executor, concurrency=2, lease_s=30, poll_interval_s=60)
        task = asyncio.create_task(worker.run())
        try:

            async def all_done() -> bool:
                found = [await runs.get_run(db, project, run["id"]) for run in backlog]
                return all(run["status"] == "completed" for run in found)

            await _until(all_done, timeout_s=10)
        finally:
            worker.stop()
            await task


async def test_a_cancelled_run_hangs_up_on_its_model_at_once(db: Database) -> None:
    """Cancelling reaches the executing worker by notification, long before its heartbeat."""
    from agentruns.engine.models.transport import ModelHTTPClient
    from agentruns.testing import fake_openai
    from agentruns.testing.server import start_in_thread

    project = await make_project(db)
    with start_in_thread(fake_openai.create_app()) as model:
        model.script({"text": "too late", "first_token_delay_s": 10})
        base_url = f"http://127.0.0.1:{model.port}/v1"
        agent = await make_agent(
            db, project, model="openai:m", model_settings={"base_url": base_url}
        )
        run = await make_run(db, project, agent["id"])
        async with ModelHTTPClient() as http:
            executor = Executor(db, http=http, default_model="test")
            # The heartbeat, which would also notice the lost lease, is 10 s away.
            worker = Worker(db, executor, concurrency=4, lease_s=30, poll_interval_s=60)
            task = asyncio.create_task(worker.run())
            try:

                async def calling() -> bool:
                    return model.state.in_flight.stats()["in_flight"] == 1

                await _until(calling)
                await runs.cancel_run(db, project, run["id"])
                started = time.monotonic()

                async def hung_up() -> bool:
                    return model.state.in_flight.stats()["in_flight"] == 0

                await _until(hung_up, timeout_s=2)
                assert time.monotonic() - started < 1
            finally:
                worker.stop()
                await task
    assert (await runs.get_run(db, project, run["id"]))["status"] == "cancelled"


async def test_runs_of_a_claim_whose_answer_was_lost_are_handed_back_at_once(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim ran in the database, but the connection broke before its answer came: the
    worker hands those runs back instead of leaving them to their leases (30 s here)."""
    claim = queue.claim_runs_to_execute
    lost: list[str] = []

    async def claim_losing_the_first_answer(*args: Any) -> Any:
        claimed = await claim(*args)
        if claimed and not lost:
            lost.extend(lease.run_id for lease, _, _ in claimed)
            raise StoreError("injected: the connection broke before the answer")
        return claimed

    monkeypatch.setattr(queue, "claim_runs_to_execute", claim_losing_the_first_answer)
    project = await make_project(db)
    agent = await make_agent(db, project, model="test")
    run = await make_run(db, project, agent["id"])
    async with running_worker(db):

        async def finished() -> bool:
            return (await runs.get_run(db, project, run["id"]))["status"] == "completed"

        await _until(finished, timeout_s=10)
    assert lost == [run["id"]]
    statuses = [
        e.data["status"] for e in await events.list_events(db, run["id"]) if e.type == "run.status"
    ]
    assert statuses == ["queued", "in_progress", "queued", "in_progress", "completed"]
    # Not the run's fault: the lost claim's attempt is not counted.
    async with db.read() as conn:
        attempts = (
            await conn.execute(
                sa.select(tables.runs.c.attempts).where(tables.runs.c.id == run["id"])
            )
        ).scalar()
    assert attempts == 1
