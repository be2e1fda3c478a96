"""The per-run event log: gap-free sequence numbers, replay for SSE readers."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from agentruns.store.clock import now
from agentruns.store.database import Database, Tx, dumps_json, notify_column
from agentruns.store.notify import EVENTS_CHANNEL, RunEvent, events_payload
from agentruns.store.tables import Time, run_events, runs

TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})

# Pre-built: SQLAlchemy spends far longer building a statement than running a built one.
_INSERT = run_events.insert()
_AFTER = (
    sa.select(run_events.c.seq, run_events.c.type, run_events.c.data)
    .where(run_events.c.run_id == sa.bindparam("run_id"), run_events.c.seq > sa.bindparam("after"))
    .order_by(run_events.c.seq)
    .limit(sa.bindparam("limit"))
)
# The run's status on every row, with its events after `after` (one row of NULLs if none):
# one statement, so one snapshot and one round trip per wake-up of an SSE reader.
_STATUS_AND_AFTER = (
    sa.select(runs.c.status, run_events.c.seq, run_events.c.type, run_events.c.data)
    .select_from(
        runs.outerjoin(
            run_events,
            sa.and_(run_events.c.run_id == runs.c.id, run_events.c.seq > sa.bindparam("after")),
        )
    )
    .where(runs.c.id == sa.bindparam("run_id"))
    .order_by(run_events.c.seq)
    .limit(sa.bindparam("limit"))
)
_PROJECT_STATUS_AND_AFTER = _STATUS_AND_AFTER.where(runs.c.project_id == sa.bindparam("project_id"))


def _insert_and_notify() -> sa.Select[Any]:
    """PostgreSQL: insert the events and send their notification, in one statement.

    The events arrive as arrays (types, and each one's data as JSON text), and the
    notification carries them too (see `notify.py`): other processes' readers then send
    them without reading them back.
    """
    new = (
        sa.func.unnest(
            sa.bindparam("types", type_=ARRAY(sa.Text)), sa.bindparam("data", type_=ARRAY(sa.Text))
        )
        .table_valued("type", "data", with_ordinality="n")
        .render_derived()
    )
    insert = run_events.insert().from_select(
        ["run_id", "seq", "type", "data", "created_at"],
        sa.select(
            sa.bindparam("run_id", type_=sa.String),
            sa.bindparam("first_seq", type_=sa.Integer) + new.c.n - 1,
            new.c.type,
            sa.cast(new.c.data, JSONB),
            sa.bindparam("inserted_at", type_=Time),
        ).select_from(new),
    )
    payload = sa.bindparam("payload", type_=sa.Text)
    return sa.select(notify_column(EVENTS_CHANNEL, payload)).add_cte(insert.cte("inserted"))


_INSERT_AND_NOTIFY = _insert_and_notify()


async def insert_events(
    tx: Tx,
    run_id: str,
    first_seq: int,
    events: list[tuple[str, dict[str, Any]]],
    *,
    notified: bool = False,
) -> None:
    """Write events numbered from `first_seq`; the caller reserved the numbers on the run row
    (and, with `notified`, already sent the PostgreSQL notification for the last one)."""
    if not events:
        return
    ts = now()
    if tx.is_postgres and not notified:
        encoded = [(kind, dumps_json(data)) for kind, data in events]
        payload = f"{run_id}:{events[-1][0]}:{first_seq}:{events_payload(encoded)}"
        await tx.conn.execute(
            _INSERT_AND_NOTIFY,
            {
                "types": [kind for kind, _ in encoded],
                "data": [data for _, data in encoded],
                "run_id": run_id,
                "first_seq": first_seq,
                "inserted_at": ts,
                "payload": payload,
            },
        )
        notified = True
    else:
        await tx.conn.execute(
            _INSERT,
            [
                {
                    "run_id": run_id,
                    "seq": first_seq + i,
                    "type": kind,
                    "data": data,
                    "created_at": ts,
                }
                for i, (kind, data) in enumerate(events)
            ],
        )
    # Readers in this process take the committed events from the notification itself.
    committed = [RunEvent(first_seq + i, kind, data) for i, (kind, data) in enumerate(events)]
    await tx.announce_event(run_id, events[-1][0], committed, notified=notified)


async def list_events(
    db: Database, run_id: str, *, after: int = 0, limit: int = 1000
) -> list[RunEvent]:
    params = {"run_id": run_id, "after": after, "limit": limit}
    async with db.read() as conn:
        return [RunEvent(*row) for row in await conn.execute(_AFTER, params)]


async def status_and_events(
    db: Database, run_id: str, *, after: int, limit: int, project_id: str | None = None
) -> tuple[str | None, list[RunEvent]]:
    """The run's status and its events after `after`, read in one statement.

    With `project_id`, a run of another project reads as missing: (None, []).

    One statement reads one snapshot: a terminal status comes with the terminal event
    (both are written by the same transaction), so a reader can stop once it has sent them.
    """
    params: dict[str, Any] = {"run_id": run_id, "after": after, "limit": limit}
    statement = _STATUS_AND_AFTER
    if project_id is not None:
        params["project_id"] = project_id
        statement = _PROJECT_STATUS_AND_AFTER
    async with db.read() as conn:
        rows = (await conn.execute(statement, params)).all()
    if not rows:
        return None, []
    events = [RunEvent(row[1], row[2], row[3]) for row in rows if row[1] is not None]
    return rows[0][0], events


async def last_event_type(tx: Tx, run_id: str) -> str | None:
    return (
        await tx.conn.execute(
            sa.select(run_events.c.type)
            .where(run_events.c.run_id == run_id)
            .order_by(run_events.c.seq.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def tool_calls_started_since_last_message(db: Database, run_id: str) -> set[str]:
    """Ids in the `tool_call.started` events after the run's last `message.completed`.

    Those are calls of the last assistant message that a worker began; one that
    has no tool message yet was interrupted (its worker died), so the executor
    must not blindly run it again.
    """
    last_message = (
        sa.select(sa.func.max(run_events.c.seq))
        .where(run_events.c.run_id == run_id, run_events.c.type == "message.completed")
        .scalar_subquery()
    )
    query = sa.select(run_events.c.data).where(
        run_events.c.run_id == run_id,
        run_events.c.type == "tool_call.started",
        run_events.c.seq > sa.func.coalesce(last_message, 0),
    )
    async with db.read() as conn:
        return {str(row.data.get("id")) for row in await conn.execute(query)}
