"""The per-run event log: gap-free sequence numbers, replay for SSE readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from agentruns.store.clock import now
from agentruns.store.database import Database, Tx, dumps_json, notify_column
from agentruns.store.messages import MESSAGE_FORMAT_VERSION, append_messages
from agentruns.store.notify import EVENTS_CHANNEL, RunEvent, events_payload
from agentruns.store.pg_statements import DriverStatement
from agentruns.store.tables import Time, run_events, run_messages, runs

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
# An event stream's read is one per run on the hot path (see `pg_statements.py`); by
# whether it is scoped to a project.
_STATUS_AND_AFTER_READS = {
    False: DriverStatement(_STATUS_AND_AFTER),
    True: DriverStatement(_STATUS_AND_AFTER.where(runs.c.project_id == sa.bindparam("project_id"))),
}


@dataclass(frozen=True, slots=True)
class Appended:
    """What one transaction appends to one run: events numbered from `first_seq` (reserved
    on the run's row by the caller), and messages placed from `first_position`."""

    run_id: str
    first_seq: int
    events: list[tuple[str, dict[str, Any]]]
    first_position: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)


def _append_and_notify() -> sa.Select[Any]:
    """PostgreSQL: insert events and messages of any number of runs, and send the events'
    notifications, in one statement.

    Each column arrives as an array (the JSON as text), and each notification carries its
    run's events too (see `notify.py`): other processes' readers send them without reading
    them back.
    """
    new_events = (
        sa.func.unnest(
            sa.bindparam("event_runs", type_=ARRAY(sa.Text)),
            sa.bindparam("event_seqs", type_=ARRAY(sa.Integer)),
            sa.bindparam("event_types", type_=ARRAY(sa.Text)),
            sa.bindparam("event_data", type_=ARRAY(sa.Text)),
        )
        .table_valued("run_id", "seq", "type", "data")
        .render_derived()
    )
    new_messages = (
        sa.func.unnest(
            sa.bindparam("message_runs", type_=ARRAY(sa.Text)),
            sa.bindparam("message_positions", type_=ARRAY(sa.Integer)),
            sa.bindparam("messages", type_=ARRAY(sa.Text)),
        )
        .table_valued("run_id", "position", "message")
        .render_derived()
    )
    inserted_at = sa.bindparam("inserted_at", type_=Time)
    insert_events = run_events.insert().from_select(
        ["run_id", "seq", "type", "data", "created_at"],
        sa.select(
            new_events.c.run_id,
            new_events.c.seq,
            new_events.c.type,
            sa.cast(new_events.c.data, JSONB),
            inserted_at,
        ),
    )
    insert_messages = run_messages.insert().from_select(
        ["run_id", "position", "format_version", "message", "created_at"],
        sa.select(
            new_messages.c.run_id,
            new_messages.c.position,
            sa.literal(MESSAGE_FORMAT_VERSION, sa.Integer),
            sa.cast(new_messages.c.message, JSONB),
            inserted_at,
        ),
    )
    payloads = (
        sa.func.unnest(sa.bindparam("payloads", type_=ARRAY(sa.Text)))
        .table_valued("payload")
        .render_derived()
    )
    return (
        sa.select(notify_column(EVENTS_CHANNEL, payloads.c.payload))
        .select_from(payloads)
        .add_cte(insert_events.cte("inserted_events"), insert_messages.cte("inserted_messages"))
    )


_APPEND_AND_NOTIFY = _append_and_notify()


async def append(tx: Tx, appended: list[Appended], *, notified: bool = False) -> None:
    """Write each run's events and messages; PostgreSQL: one statement, which also notifies
    other processes of the events (unless `notified`: the caller did)."""
    ts = now()
    if tx.is_postgres:
        await _append_on_postgres(tx, appended, ts, notify=not notified)
        notified = True
    else:
        rows = [
            {"run_id": a.run_id, "seq": seq, "type": kind, "data": data, "created_at": ts}
            for a in appended
            for seq, (kind, data) in enumerate(a.events, a.first_seq)
        ]
        if rows:
            await tx.conn.execute(_INSERT, rows)
        for a in appended:
            await append_messages(tx, a.run_id, a.first_position, a.messages)
    for a in appended:
        if a.events:
            # Readers in this process take the committed events from the notification itself.
            committed = [
                RunEvent(seq, kind, data) for seq, (kind, data) in enumerate(a.events, a.first_seq)
            ]
            await tx.announce_event(a.run_id, a.events[-1][0], committed, notified=notified)


async def _append_on_postgres(tx: Tx, appended: list[Appended], ts: float, *, notify: bool) -> None:
    params: dict[str, Any] = {
        "event_runs": [],
        "event_seqs": [],
        "event_types": [],
        "event_data": [],
        "message_runs": [],
        "message_positions": [],
        "messages": [],
        "payloads": [],
        "inserted_at": ts,
    }
    for a in appended:
        encoded = [(kind, dumps_json(data)) for kind, data in a.events]
        for seq, (kind, data) in enumerate(encoded, a.first_seq):
            params["event_runs"].append(a.run_id)
            params["event_seqs"].append(seq)
            params["event_types"].append(kind)
            params["event_data"].append(data)
        for position, message in enumerate(a.messages, a.first_position):
            params["message_runs"].append(a.run_id)
            params["message_positions"].append(position)
            params["messages"].append(dumps_json(message))
        if notify and encoded:
            params["payloads"].append(
                f"{a.run_id}:{encoded[-1][0]}:{a.first_seq}:{events_payload(encoded)}"
            )
    await tx.conn.execute(_APPEND_AND_NOTIFY, params)


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
    if events:
        await append(tx, [Appended(run_id, first_seq, events)], notified=notified)


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
    scoped = project_id is not None
    if scoped:
        params["project_id"] = project_id
    async with db.read() as conn:
        rows = await _STATUS_AND_AFTER_READS[scoped].rows(conn, params)
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
