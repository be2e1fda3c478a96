"""What an SSE reader reads from the table: only what no notification brought it.

The reader's first read may already return events whose notifications arrive after it
(committed while it ran): they are not a reason to read again.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agentruns.api.routes import events as events_route
from agentruns.store import events, queue
from agentruns.store.database import Database
from agentruns.store.execution import commit_step
from integration.store_helpers import make_agent, make_project, make_run


async def test_events_pushed_after_the_first_read_returned_them_cost_no_read(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"])
    claimed = await queue.claim_next_run(db, "w1", 30)
    assert claimed is not None
    lease = claimed[0]
    reads = 0
    real_read = events.status_and_events

    async def status_and_events(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 1:
            # Committed after the reader began to watch and before its first read: the read
            # returns it, and its notification comes too.
            await commit_step(db, lease, events=[("message.delta", {"delta": "a"})])
        return await real_read(*args, **kwargs)

    monkeypatch.setattr(events_route.event_store, "status_and_events", status_and_events)
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(db=db)))
    stream = events_route.event_stream(
        request,  # type: ignore[arg-type]
        project,
        run["id"],
        0,
        heartbeat_s=30,
        poll_s=30,
    )
    try:
        async with asyncio.timeout(10):
            assert await anext(stream) == b""
            first = await anext(stream)
            assert first is not None and b'"delta":"a"' in first
            # The reader goes on as a server drives it: it takes the duplicate, then waits.
            reading = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.2)
            await commit_step(db, lease, events=[("message.delta", {"delta": "b"})])
            second = await reading
    finally:
        await stream.aclose()
    assert second is not None and b'"delta":"b"' in second and b'"delta":"a"' not in second
    log = await events.list_events(db, run["id"])
    assert second.startswith(b"id: %d\n" % log[-1].seq)
    assert reads == 1, reads
