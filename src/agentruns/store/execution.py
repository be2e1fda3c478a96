"""The executing worker's writes, each fenced on its lease token.

If the run was cancelled or its lease passed to another worker, the fenced
UPDATE matches nothing and `LeaseLost` is raised: the transaction rolls back
and the worker drops the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentruns.errors import LeaseLost
from agentruns.store.database import Database
from agentruns.store.messages import append_messages
from agentruns.store.queue import Lease
from agentruns.store.transitions import EventSpec, update_run


async def commit_step(
    db: Database,
    lease: Lease,
    *,
    values: dict[str, Any] | None = None,
    events: Sequence[EventSpec] = (),
    messages: Sequence[dict[str, Any]] = (),
    position: int = 0,
) -> Any:
    """Atomically update the run, append events and messages (from `position`); the new row."""
    async with db.write() as tx:
        row = await update_run(
            tx,
            lease.run_id,
            values or {},
            match={"lease_token": lease.token, "status": "in_progress"},
            events=events,
        )
        if row is None:
            raise LeaseLost(f"run {lease.run_id} is no longer held by this worker")
        await append_messages(tx, lease.run_id, position, list(messages))
    return row
