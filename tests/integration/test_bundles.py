"""Bundles and the tool-call bookkeeping in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from agentruns.store import bundles, events, queue, runs
from agentruns.store.database import Database
from agentruns.store.execution import commit_step
from integration.store_helpers import make_agent, make_project, make_run

TIME = {"type": "builtin", "name": "get_current_time"}
FETCH = {"type": "builtin", "name": "fetch_url"}


async def test_create_put_list_delete_per_project(db: Database) -> None:
    mine, theirs = await make_project(db, "mine"), await make_project(db, "theirs")
    created = await bundles.create_bundle(db, mine, "research", "web", [TIME])
    assert created is not None
    assert created["name"] == "research" and created["tools"] == [TIME]
    assert created["builtin"] is False and created["created_at"] == created["updated_at"]
    assert await bundles.create_bundle(db, mine, "research", "again", []) is None
    assert await bundles.create_bundle(db, theirs, "research", "theirs", [FETCH]) is not None

    replaced, was_created = await bundles.put_bundle(db, mine, "research", "more", [TIME, FETCH])
    assert not was_created
    assert replaced["description"] == "more" and replaced["tools"] == [TIME, FETCH]
    assert replaced["created_at"] == created["created_at"]
    _new, was_created = await bundles.put_bundle(db, mine, "another", "", [])
    assert was_created

    assert [b["name"] for b in await bundles.list_bundles(db, mine)] == ["another", "research"]
    theirs_bundle = await bundles.get_bundle(db, theirs, "research")
    assert theirs_bundle is not None and theirs_bundle["tools"] == [FETCH]

    assert await bundles.delete_bundle(db, mine, "research")
    assert not await bundles.delete_bundle(db, mine, "research")
    assert await bundles.get_bundle(db, mine, "research") is None
    assert await bundles.get_bundle(db, theirs, "research") is not None


async def test_a_run_may_have_no_bundle(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    assert run["bundle"] is None
    named = await make_run(db, project, agent["id"], bundle="default")
    assert named["bundle"] == "default"
    stored = await runs.get_run(db, project, run["id"])
    assert stored is not None and stored["bundle"] is None


async def test_started_tool_calls_are_those_of_the_last_assistant_message(db: Database) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    claimed = await queue.claim_next_run(db, "w1", 30)
    assert claimed is not None
    lease, _row = claimed

    def assistant(*ids: str) -> dict[str, object]:
        calls = [{"id": i, "name": "t", "arguments": "{}"} for i in ids]
        return {"role": "assistant", "content": None, "tool_calls": calls}

    first = assistant("a")
    await commit_step(
        db, lease, events=[("message.completed", first)], messages=[first], position=1
    )
    await commit_step(db, lease, events=[("tool_call.started", {"id": "a"})])
    assert await events.tool_calls_started_since_last_message(db, run["id"]) == {"a"}

    answer = {"role": "tool", "tool_call_id": "a", "name": "t", "content": "ok"}
    second = assistant("a", "b")  # a model may reuse an id in a later step
    await commit_step(
        db, lease, events=[("tool_call.completed", {"id": "a"})], messages=[answer], position=2
    )
    await commit_step(
        db, lease, events=[("message.completed", second)], messages=[second], position=3
    )
    assert await events.tool_calls_started_since_last_message(db, run["id"]) == set()
    await commit_step(db, lease, events=[("tool_call.started", {"id": "b"})])
    assert await events.tool_calls_started_since_last_message(db, run["id"]) == {"b"}
