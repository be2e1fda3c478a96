"""The queue on SQLite and PostgreSQL: atomic claims, fencing, leases, requeue, attempts."""

from __future__ import annotations

import asyncio

import pytest

from agentruns.errors import LeaseLost
from agentruns.store import events, queue, runs
from agentruns.store.database import Database
from agentruns.store.execution import commit_step
from integration.store_helpers import make_agent, make_project, make_run


async def test_claims_oldest_first_and_each_run_once_under_concurrency(db_url: str) -> None:
    setup = Database(db_url)
    project = await make_project(setup)
    agent = await make_agent(setup, project)
    made = [await make_run(setup, project, agent["id"], f"r{i}") for i in range(12)]
    await setup.close()

    # Several "processes": separate Database objects, each with concurrent claimers.
    dbs = [Database(db_url) for _ in range(3)]

    async def claimer(db: Database, name: str) -> list[str]:
        got = []
        while (claimed := await queue.claim_next_run(db, name, 30)) is not None:
            got.append(claimed[0].run_id)
        return got

    claims = await asyncio.gather(
        *(claimer(db, f"w{i}-{j}") for i, db in enumerate(dbs) for j in range(2))
    )
    for db in dbs:
        await db.close()
    flat = [run_id for got in claims for run_id in got]
    assert sorted(flat) == sorted(r["id"] for r in made)
    assert len(flat) == len(set(flat))


async def test_claim_sets_lease_and_in_progress_event(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    lease, row = await queue.claim_next_run(db, "w1", 30)
    assert lease.run_id == run["id"] and row.status == "in_progress" and row.attempts == 1
    assert row.turn_deadline == pytest.approx(row.started_at + 600, abs=1)
    assert await queue.claim_next_run(db, "w2", 30) is None
    log = await events.list_events(db, run["id"])
    assert [e.data["status"] for e in log] == ["queued", "in_progress"]
    # The claim's event carries the run as the claim left it (rendered in SQL on PostgreSQL).
    assert log[-1].data == await runs.get_run(db, project, run["id"])


async def test_a_claim_takes_no_more_runs_than_it_asks_for(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    made = [await make_run(db, project, agent["id"], f"r{i}") for i in range(4)]
    for taken in range(1, 5):
        claimed = await queue.claim_next_run(db, "w1", 30)
        assert claimed is not None and claimed[0].run_id == made[taken - 1]["id"]
        listed, _ = await runs.list_runs(
            db, project, status="queued", agent_id=None, limit=10, after=None
        )
        assert len(listed) == 4 - taken
    assert await queue.claim_next_run(db, "w1", 30) is None


async def test_a_batch_claim_takes_the_oldest_runs_each_with_its_own_lease(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    made = [await make_run(db, project, agent["id"], f"r{i}") for i in range(5)]
    other = Database(db.url)  # a second process claiming concurrently
    try:
        first, second = await asyncio.gather(
            queue.claim_runs(db, "w1", 30, 3), queue.claim_runs(other, "w2", 30, 3)
        )
    finally:
        await other.close()
    assert len(first) + len(second) == 5
    claimed = [lease.run_id for lease, _ in [*first, *second]]
    assert sorted(claimed) == sorted(r["id"] for r in made)
    order = [r["id"] for r in made]
    for batch in (first, second):
        positions = [order.index(lease.run_id) for lease, _ in batch]
        assert positions == sorted(positions)  # each batch in queue order
    tokens = {lease.token for lease, _ in [*first, *second]}
    assert len(tokens) == 5
    for lease, row in [*first, *second]:
        assert row.status == "in_progress" and row.lease_token == lease.token
        types = [e.data["status"] for e in await events.list_events(db, lease.run_id)]
        assert types == ["queued", "in_progress"]
    assert await queue.claim_runs(db, "w3", 30, 8) == []


async def test_a_claim_to_execute_brings_each_run_its_own_conversation(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    made = [await make_run(db, project, agent["id"], f"question {i}") for i in range(3)]
    claimed = await queue.claim_runs_to_execute(db, "w1", 30, 8)
    assert [lease.run_id for lease, _, _ in claimed] == [r["id"] for r in made]
    for i, (_, _, history) in enumerate(claimed):
        assert history == [{"role": "user", "content": f"question {i}"}]
    # Handed back after a step, the run comes back with its longer conversation, in order.
    first = claimed[0][0]
    added = [{"role": "assistant", "content": f"answer {i}"} for i in range(12)]
    await commit_step(db, first, messages=added, position=1)
    await queue.release_lease(db, first)
    [(_, _, history)] = await queue.claim_runs_to_execute(db, "w2", 30, 8)
    assert history == [{"role": "user", "content": "question 0"}, *added]


async def test_writes_are_fenced_after_cancel(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    lease, _ = await queue.claim_next_run(db, "w1", 30)
    await runs.cancel_run(db, project, run["id"])
    with pytest.raises(LeaseLost):
        await commit_step(db, lease, events=[("message.delta", {"delta": "late"})])
    assert "message.delta" not in [e.type for e in await events.list_events(db, run["id"])]
    assert await queue.extend_leases(db, [lease], 30) == set()


async def test_expired_lease_is_requeued_then_failed_after_max_attempts(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    for attempt in (1, 2):
        lease, row = await queue.claim_next_run(db, f"w{attempt}", -1)  # already expired
        assert row.attempts == attempt
        await commit_step(db, lease, events=[("message.delta", {"delta": "partial"})])
        assert await queue.requeue_expired_leases(db, max_attempts=2) == 1
        # The old owner is fenced out.
        with pytest.raises(LeaseLost):
            await commit_step(db, lease, events=[("message.delta", {"delta": "zombie"})])
        if attempt == 1:
            assert (await runs.get_run(db, project, run["id"]))["status"] == "queued"
    final = await runs.get_run(db, project, run["id"])
    assert final["status"] == "failed" and final["error"]["type"] == "worker_lost"
    log = await events.list_events(db, run["id"])
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert [e.type for e in log].count("message.discarded") == 1
    assert log[-1].type == "run.failed"


async def test_release_lease_hands_run_back_without_counting_attempt(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    await make_run(db, project, agent["id"])
    lease, _ = await queue.claim_next_run(db, "w1", 30)
    assert await queue.release_lease(db, lease)
    again, row = await queue.claim_next_run(db, "w2", 30)
    assert again.run_id == lease.run_id and row.attempts == 1
