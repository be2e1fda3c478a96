"""The webhook outbox on SQLite and PostgreSQL: written with the status change or not at all,
claimed by one dispatcher per attempt, fenced, retried, redelivered; the signing secrets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentruns.store import queue, runs, webhooks
from agentruns.store.database import Database
from agentruns.store.execution import commit_step
from agentruns.store.tables import runs as runs_table
from agentruns.store.transitions import update_run
from integration.store_helpers import make_agent, make_project, make_run

HOOK = "https://hooks.example.com/agentruns"


async def _deliveries(db: Database, project: str, run_id: str) -> list[dict[str, Any]]:
    found = await webhooks.list_run_deliveries(db, project, run_id)
    assert found is not None
    return found


async def _setup(db: Database, **run_options: Any) -> tuple[str, dict[str, Any]]:
    project = await make_project(db)
    agent = await make_agent(db, project)
    return project, await make_run(db, project, agent["id"], **run_options)


async def test_a_status_change_commits_its_delivery(db: Database) -> None:
    project, run = await _setup(db, callback_url=HOOK)
    lease, _row = await queue.claim_next_run(db, "w1", 30)  # in_progress: no webhook
    assert await _deliveries(db, project, run["id"]) == []
    await commit_step(
        db,
        lease,
        values={"status": "awaiting_tool_calls", "pending_tool_calls": [{"id": "c1"}]},
        events=["run.status"],
    )
    cancelled = await runs.cancel_run(db, project, run["id"])
    assert cancelled is not None
    found = await _deliveries(db, project, run["id"])
    assert [(d["type"], d["status"], d["url"]) for d in found] == [
        ("run.awaiting_tool_calls", "pending", HOOK),
        ("run.cancelled", "pending", HOOK),
    ]
    claimed = await webhooks.claim_due_deliveries(db, limit=10, lease_s=30)
    payloads = {c.payload["type"]: c.payload["data"] for c in claimed}
    # The payload is the run object as committed with that status.
    assert payloads["run.cancelled"] == await runs.get_run(db, project, run["id"])
    assert payloads["run.awaiting_tool_calls"]["pending_tool_calls"] == [{"id": "c1"}]


async def test_no_commit_no_delivery(db: Database) -> None:
    project, run = await _setup(db, callback_url=HOOK)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with db.write() as tx:
            row = await update_run(tx, run["id"], {"status": "completed"}, events=["run.status"])
            assert row is not None
            raise Abort
    assert (await runs.get_run(db, project, run["id"]))["status"] == "queued"
    assert await _deliveries(db, project, run["id"]) == []
    # A fenced change that matches nothing writes nothing either.
    async with db.write() as tx:
        where = [runs_table.c.lease_token == "not-the-token"]
        assert await update_run(tx, run["id"], {"status": "failed"}, where=where) is None
    assert await _deliveries(db, project, run["id"]) == []
    assert await webhooks.claim_due_deliveries(db, limit=10, lease_s=30) == []


async def test_runs_without_callback_url_get_no_delivery(db: Database) -> None:
    project, run = await _setup(db)
    await runs.cancel_run(db, project, run["id"])
    assert await _deliveries(db, project, run["id"]) == []


async def test_two_dispatchers_never_hold_the_same_attempt(db_url: str) -> None:
    setup = Database(db_url)
    project = await make_project(setup)
    agent = await make_agent(setup, project)
    for i in range(10):
        run = await make_run(setup, project, agent["id"], f"r{i}", callback_url=HOOK)
        await runs.cancel_run(setup, project, run["id"])
    await setup.close()

    dbs = [Database(db_url) for _ in range(3)]

    async def dispatcher(db: Database) -> list[tuple[str, int]]:
        got: list[tuple[str, int]] = []
        while claimed := await webhooks.claim_due_deliveries(db, limit=2, lease_s=30):
            got += [(c.id, c.attempt) for c in claimed]
        return got

    claims = await asyncio.gather(*(dispatcher(db) for db in dbs for _ in range(2)))
    for db in dbs:
        await db.close()
    flat = [claim for got in claims for claim in got]
    assert len(flat) == 10 and len(set(flat)) == 10
    assert {attempt for _id, attempt in flat} == {1}


async def test_outcomes_are_fenced_on_the_lease(db: Database) -> None:
    project, run = await _setup(db, callback_url=HOOK)
    await runs.cancel_run(db, project, run["id"])
    # A lease of 0 s expires at once: as if this dispatcher had died mid-attempt.
    [first] = await webhooks.claim_due_deliveries(db, limit=5, lease_s=0)
    [second] = await webhooks.claim_due_deliveries(db, limit=5, lease_s=30)
    assert (first.id, first.attempt, second.attempt) == (second.id, 1, 2)
    assert second.token != first.token
    late = await webhooks.record_attempt(
        db, first, delivered=True, status_code=200, error=None, next_attempt_at=None
    )
    assert late is False  # the dead dispatcher's outcome is not recorded
    assert await webhooks.record_attempt(
        db, second, delivered=True, status_code=204, error=None, next_attempt_at=None
    )
    [delivery] = await _deliveries(db, project, run["id"])
    assert delivery["status"] == "delivered" and delivery["next_attempt_at"] is None
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [(1, None), (2, 204)]
    assert "dispatcher stopped" in delivery["attempts"][0]["error"]
    assert await webhooks.claim_due_deliveries(db, limit=5, lease_s=30) == []


async def test_retry_give_up_and_redeliver(db: Database) -> None:
    project, run = await _setup(db, callback_url=HOOK)
    await runs.cancel_run(db, project, run["id"])
    [attempt] = await webhooks.claim_due_deliveries(db, limit=5, lease_s=30)
    # A redelivery while an attempt is in flight would race it: refused.
    with pytest.raises(webhooks.StateConflict):
        await webhooks.redeliver(db, project, attempt.id)
    retry_at = attempt.claimed_at + 3600
    await webhooks.record_attempt(
        db, attempt, delivered=False, status_code=500, error="HTTP 500", next_attempt_at=retry_at
    )
    [delivery] = await _deliveries(db, project, run["id"])
    assert delivery["status"] == "pending" and delivery["next_attempt_at"] is not None
    assert await webhooks.claim_due_deliveries(db, limit=5, lease_s=30) == []  # not due yet
    assert await webhooks.next_due_at(db) == pytest.approx(retry_at)

    redelivered = await webhooks.redeliver(db, project, attempt.id)
    assert redelivered is not None and redelivered["status"] == "pending"
    [again] = await webhooks.claim_due_deliveries(db, limit=5, lease_s=30)
    assert (again.id, again.attempt, again.series_attempt) == (attempt.id, 2, 1)
    await webhooks.record_attempt(
        db, again, delivered=False, status_code=410, error="HTTP 410", next_attempt_at=None
    )
    [delivery] = await _deliveries(db, project, run["id"])
    assert delivery["status"] == "failed" and delivery["finished_at"] is not None
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 410]
    assert await webhooks.redeliver(db, "another-project", attempt.id) is None
    assert await webhooks.list_run_deliveries(db, "another-project", run["id"]) is None


async def test_signing_secret_is_created_once_and_rotated(db: Database) -> None:
    project = await make_project(db)
    first = await asyncio.gather(*(webhooks.get_secret(db, project) for _ in range(4)))
    assert len({s["secret"] for s in first}) == 1
    secret = first[0]["secret"]
    assert secret.startswith("whsec_") and first[0]["previous_secret_expires_at"] is None
    assert await webhooks.signing_secrets(db, project) == [secret]
    rotated = await webhooks.rotate_secret(db, project)
    assert rotated["secret"] != secret and rotated["previous_secret_expires_at"] is not None
    assert await webhooks.signing_secrets(db, project) == [rotated["secret"], secret]
    assert (await webhooks.get_secret(db, project))["secret"] == rotated["secret"]
