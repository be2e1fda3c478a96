"""The per-run event log: gap-free sequence numbers, replay for SSE readers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agentruns.store.clock import now
from agentruns.store.database import Database, Tx
from agentruns.store.tables import run_events

TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})


@dataclass(frozen=True, slots=True)
class RunEvent:
    seq: int
    type: str
    data: dict[str, Any]


async def insert_events(
    tx: Tx, run_id: str, first_seq: int, events: list[tuple[str, dict[str, Any]]]
) -> None:
    """Write events numbered from `first_seq`; the caller reserved the numbers on the run row."""
    if not events:
        return
    ts = now()
    await tx.conn.execute(
        run_events.insert(),
        [
            {"run_id": run_id, "seq": first_seq + i, "type": kind, "data": data, "created_at": ts}
            for i, (kind, data) in enumerate(events)
        ],
    )
    await tx.announce_event(run_id, events[-1][0])


async def list_events(
    db: Database, run_id: str, *, after: int = 0, limit: int = 1000
) -> list[RunEvent]:
    query = (
        sa.select(run_events.c.seq, run_events.c.type, run_events.c.data)
        .where(run_events.c.run_id == run_id, run_events.c.seq > after)
        .order_by(run_events.c.seq)
        .limit(limit)
    )
    async with db.read() as conn:
        return [RunEvent(row.seq, row.type, row.data) for row in await conn.execute(query)]


async def last_event_type(tx: Tx, run_id: str) -> str | None:
    return (
        await tx.conn.execute(
            sa.select(run_events.c.type)
            .where(run_events.c.run_id == run_id)
            .order_by(run_events.c.seq.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
