"""Runs in the store, on SQLite and PostgreSQL: create, events, continue, cancel, idempotency."""

from __future__ import annotations

import asyncio

import pytest

from agentruns.store import events, messages, queue, runs
from agentruns.store.database import Database
from agentruns.store.execution import commit_step
from agentruns.store.runs import IdempotencyConflict, NewRun, StateConflict
from integration.store_helpers import make_agent, make_project, make_run


async def test_create_run_writes_row_messages_and_first_event(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"], "hello")
    assert run["status"] == "queued"
    assert run["chat_id"] == run["agent_id"] == agent["id"]
    assert run["user_id"] == project
    assert await messages.load_messages(db, run["id"]) == [{"role": "user", "content": "hello"}]
    log = await events.list_events(db, run["id"])
    assert [(e.seq, e.type, e.data["status"]) for e in log] == [(1, "run.status", "queued")]


async def test_other_project_cannot_see_run(db: Database) -> None:
    mine, theirs = await make_project(db, "mine"), await make_project(db, "theirs")
    agent = await make_agent(db, mine)
    run = await make_run(db, mine, agent["id"])
    assert await runs.get_run(db, theirs, run["id"]) is None
    assert await runs.cancel_run(db, theirs, run["id"]) is None
    # Read back, the run is the object its create answered, field for field.
    assert await runs.get_run(db, mine, run["id"]) == run


async def test_idempotency_key_returns_first_run_and_refuses_other_body(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    new = NewRun(project, agent["id"], 1, [{"role": "user", "content": "x"}], [], 600.0)
    first, created = await runs.create_run(db, new, idempotency_key="k1", request_hash="h1")
    again, created_again = await runs.create_run(db, new, idempotency_key="k1", request_hash="h1")
    assert created and not created_again and again["id"] == first["id"]
    with pytest.raises(IdempotencyConflict):
        await runs.create_run(db, new, idempotency_key="k1", request_hash="other")
    listed, _ = await runs.list_runs(db, project, status=None, agent_id=None, limit=10, after=None)
    assert [r["id"] for r in listed] == [first["id"]]


async def test_concurrent_requests_with_one_idempotency_key_create_one_run(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    new = NewRun(project, agent["id"], 1, [{"role": "user", "content": "x"}], [], 600.0)
    results = await asyncio.gather(
        *(runs.create_run(db, new, idempotency_key="same", request_hash="h") for _ in range(5))
    )
    assert len({run["id"] for run, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_list_runs_paginates_newest_first_and_filters(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    made = [await make_run(db, project, agent["id"], f"m{i}") for i in range(5)]
    seen, cursor = [], None
    while True:
        page, cursor = await runs.list_runs(
            db, project, status="queued", agent_id=agent["id"], limit=2, after=cursor
        )
        seen += [r["id"] for r in page]
        if cursor is None:
            break
    assert seen == [r["id"] for r in reversed(made)]
    none, _ = await runs.list_runs(
        db, project, status="completed", agent_id=None, limit=10, after=None
    )
    assert none == []


async def test_continue_only_from_completed_and_keeps_history(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"], "first")
    with pytest.raises(StateConflict):
        await runs.continue_run(db, project, run["id"], "again")
    lease, _row = await queue.claim_next_run(db, "w1", 30)
    answer = {"role": "assistant", "content": "done"}
    await commit_step(
        db,
        lease,
        values={"status": "completed", "last_agent_message": "done", "lease_token": None},
        events=["run.status", "run.completed"],
        messages=[answer],
        position=1,
    )
    continued = await runs.continue_run(db, project, run["id"], "more please")
    assert continued["status"] == "queued"
    assert await messages.load_messages(db, run["id"]) == [
        {"role": "user", "content": "first"},
        answer,
        {"role": "user", "content": "more please"},
    ]
    seqs = [e.seq for e in await events.list_events(db, run["id"])]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_cancel_terminal_run_is_a_conflict_and_changes_nothing(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    cancelled = await runs.cancel_run(db, project, run["id"])
    assert cancelled["status"] == "cancelled"
    before = await events.list_events(db, run["id"])
    with pytest.raises(StateConflict):
        await runs.cancel_run(db, project, run["id"])
    assert await events.list_events(db, run["id"]) == before
    assert [e.type for e in before] == ["run.status", "run.status", "run.cancelled"]


class Interrupted(Exception):
    pass


async def test_a_write_that_fails_half_way_leaves_nothing_behind(db: Database) -> None:
    """Writes are transactions on both databases (PostgreSQL reads run in autocommit)."""
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    lease = await queue.claim_next_run(db, "w", 60)
    assert lease is not None
    before = await events.list_events(db, run["id"])
    with pytest.raises(Interrupted):
        async with db.write() as tx:
            await events.insert_events(tx, run["id"], 99, [("message.delta", {"delta": "x"})])
            raise Interrupted
    assert await events.list_events(db, run["id"]) == before
    # And a write that completes is seen by the next read.
    await commit_step(db, lease[0], events=[("message.delta", {"delta": "y"})])
    assert (await events.list_events(db, run["id"]))[-1].data == {"delta": "y"}
