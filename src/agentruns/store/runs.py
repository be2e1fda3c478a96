"""Agent runs as the API sees them: create (idempotently), read, list, continue, cancel."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from agentruns.store.clock import new_id, now
from agentruns.store.database import Database, dumps_json, notify_column
from agentruns.store.events import insert_events
from agentruns.store.messages import append_messages, insert_from_array, next_position
from agentruns.store.notify import EVENTS_CHANNEL, QUEUE_CHANNEL, RunEvent, events_payload
from agentruns.store.pagination import page
from agentruns.store.pg_statements import DriverStatement
from agentruns.store.tables import agents, idempotency_keys, run_events, runs
from agentruns.store.transitions import (
    TERMINAL_STATUSES,
    render_known_run,
    render_run,
    status_events,
    update_run,
)

IDEMPOTENCY_WINDOW_S = 24 * 3600
# Pre-built: SQLAlchemy spends far longer building a statement than running a built one.
_INSERT_RUN = runs.insert().returning(runs)
# PostgreSQL: the same, telling other processes of the run's first event and of the queue.
_INSERT_RUN_NOTIFYING = runs.insert().returning(
    runs,
    notify_column(EVENTS_CHANNEL, runs.c.id + ":run.status"),
    notify_column(QUEUE_CHANNEL, sa.literal("", sa.Text)),
)


class StateConflict(Exception):
    """The run's status forbids the change; the message says why."""


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""


class AgentChanged(Exception):
    """The agent no longer pins the version the new run was built from (it was updated,
    published or deleted meanwhile): build the run again from a fresh read."""


def _still_pinned(production: bool) -> sa.ColumnElement[bool]:
    """Whether the run's agent still pins `agent_version` for the run's environment."""
    pinned = agents.c.published_version if production else agents.c.latest_version
    return sa.exists().where(
        agents.c.id == sa.bindparam("agent_id"),
        agents.c.project_id == sa.bindparam("project_id"),
        agents.c.deleted_at.is_(None),
        pinned == sa.bindparam("agent_version"),
    )


_STILL_PINNED = {production: sa.select(_still_pinned(production)) for production in (False, True)}


@dataclass
class NewRun:
    project_id: str
    agent_id: str
    agent_version: int
    messages: list[dict[str, Any]]
    results: list[dict[str, Any]]
    timeout_s: float
    vars: dict[str, Any] = field(default_factory=dict)
    callback_url: str | None = None
    bundle: str | None = None
    environment: str = "playground"
    metadata: dict[str, Any] = field(default_factory=dict)
    tool_response_timeout_s: float | None = None


async def create_run(
    db: Database,
    new: NewRun,
    *,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Queue a run; returns (run, created). A repeated idempotency key returns the first run.

    Raises `AgentChanged` unless the agent still pins `new.agent_version`, checked in the
    same statement or transaction that inserts the run.
    """
    try:
        return await _create_run(db, new, idempotency_key, request_hash)
    except sa.exc.IntegrityError:
        if idempotency_key is None:
            raise
        # A concurrent request with the same key won the insert: answer as it did.
        return await _create_run(db, new, idempotency_key, request_hash)


async def _replayed_run(
    conn: AsyncConnection, project_id: str, key: str, request_hash: str | None, ts: float
) -> tuple[Any, bool]:
    """(the run an earlier request with `key` created, whether the key is spent)."""
    key_filter = sa.and_(idempotency_keys.c.project_id == project_id, idempotency_keys.c.key == key)
    seen = (await conn.execute(sa.select(idempotency_keys).where(key_filter))).first()
    if seen is None:
        return None, False
    if seen.created_at <= ts - IDEMPOTENCY_WINDOW_S:
        return None, True
    if seen.request_hash != request_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body"
        )
    return (await conn.execute(sa.select(runs).where(runs.c.id == seen.run_id))).one(), True


async def find_replayed_run(
    db: Database, project_id: str, key: str, request_hash: str
) -> dict[str, Any] | None:
    """The run an earlier request with this key and body created, if any (409 if other body).

    Checked before anything else, so a retry gets its run even if the agent changed since.
    """
    async with db.read() as conn:
        row, _spent = await _replayed_run(conn, project_id, key, request_hash, now())
    return None if row is None else render_run(row)


def _new_row(new: NewRun, run_id: str, ts: float) -> dict[str, Any]:
    """The columns of a new run's row."""
    return {
        "id": run_id,
        "project_id": new.project_id,
        "agent_id": new.agent_id,
        "agent_version": new.agent_version,
        "status": "queued",
        "vars": new.vars,
        "results": new.results,
        "pending_tool_calls": [],
        "callback_url": new.callback_url,
        "bundle": new.bundle,
        "environment": new.environment,
        "usage": {"requests": 0, "input_tokens": 0, "output_tokens": 0},
        "metadata": new.metadata,
        "timeout_s": new.timeout_s,
        "tool_response_timeout_s": new.tool_response_timeout_s,
        "created_at": ts,
        "updated_at": ts,
        "queued_at": ts,
        "event_seq": 1,
    }


# The columns a new run's row leaves at their defaults, as a fresh row has them.
_UNSET = {"last_agent_message": None, "error": None, "started_at": None, "completed_at": None}


def _create_statement(production: bool) -> sa.Select[Any]:
    """PostgreSQL: insert a run, its messages and its first event, and tell other processes
    of the event and of the queue, in one statement (data-modifying CTEs).

    The run object (the event's data) is rendered beforehand from the values inserted.
    Nothing is inserted, and no row comes back, unless the agent still pins the run's
    version (`AgentChanged`).
    """
    columns = _new_row(NewRun("", "", 0, [], [], 0.0), "", 0.0)
    created = (
        runs.insert()
        .from_select(
            list(columns),
            sa.select(*(sa.bindparam(name, type_=runs.c[name].type) for name in columns)).where(
                _still_pinned(production)
            ),
        )
        .returning(runs.c.id)
        .cte("created")
    )
    insert_messages = insert_from_array(
        created, sa.literal(0, sa.Integer), sa.bindparam("created_at")
    )
    insert_event = run_events.insert().from_select(
        ["run_id", "seq", "type", "data", "created_at"],
        sa.select(
            created.c.id,
            sa.literal(1, sa.Integer),
            sa.literal("run.status", sa.Text),
            sa.cast(sa.bindparam("run_object", type_=sa.Text), JSONB),
            sa.bindparam("created_at"),
        ).select_from(created),
    )
    return (
        sa.select(
            notify_column(EVENTS_CHANNEL, sa.bindparam("notify_payload", type_=sa.Text)),
            notify_column(QUEUE_CHANNEL, sa.literal("", sa.Text)),
        )
        .select_from(created)
        .add_cte(insert_messages.cte("inserted_messages"), insert_event.cte("inserted_event"))
    )


_CREATE = {
    production: DriverStatement(_create_statement(production)) for production in (False, True)
}


async def _create_run_in_one_statement(db: Database, new: NewRun) -> dict[str, Any]:
    """A run without an idempotency key on PostgreSQL: one round trip, no BEGIN or COMMIT."""
    ts = now()
    values = _new_row(new, new_id(), ts)
    run, encoded = render_known_run({**values, **_UNSET})
    params = {
        **values,
        "messages": [dumps_json(message) for message in new.messages],
        "run_object": encoded,
        "notify_payload": f"{values['id']}:run.status:1:"
        + events_payload([("run.status", encoded)]),
    }
    async with db.write(one_statement=True) as tx:
        statement = _CREATE[new.environment == "production"]
        if not await statement.fetch(tx.conn, params):
            raise AgentChanged(new.agent_id)
        await tx.announce_event(
            values["id"], "run.status", [RunEvent(1, "run.status", run)], notified=True
        )
        await tx.announce_queued(notified=True)
    return run


async def _create_run(
    db: Database, new: NewRun, idempotency_key: str | None, request_hash: str | None
) -> tuple[dict[str, Any], bool]:
    if db.is_postgres and idempotency_key is None:
        return await _create_run_in_one_statement(db, new), True
    ts = now()
    run_id = new_id()
    async with db.write() as tx:
        if idempotency_key is not None:
            replayed, spent = await _replayed_run(
                tx.conn, new.project_id, idempotency_key, request_hash, ts
            )
            if replayed is not None:
                return render_run(replayed), False
            if spent:
                await tx.conn.execute(
                    idempotency_keys.delete().where(
                        idempotency_keys.c.project_id == new.project_id,
                        idempotency_keys.c.key == idempotency_key,
                    )
                )
        pinned = {k: getattr(new, k) for k in ("agent_id", "project_id", "agent_version")}
        if not (
            await tx.conn.execute(_STILL_PINNED[new.environment == "production"], pinned)
        ).scalar():
            raise AgentChanged(new.agent_id)
        values = _new_row(new, run_id, ts)
        insert = _INSERT_RUN_NOTIFYING if tx.is_postgres else _INSERT_RUN
        row = (await tx.conn.execute(insert, values)).one()
        await append_messages(tx, run_id, 0, new.messages)
        run = render_run(row)
        await insert_events(tx, run_id, 1, [("run.status", run)], notified=True)
        if idempotency_key is not None:
            await tx.conn.execute(
                idempotency_keys.insert().values(
                    project_id=new.project_id,
                    key=idempotency_key,
                    request_hash=request_hash,
                    run_id=run_id,
                    created_at=ts,
                )
            )
        await tx.announce_queued(notified=True)
    return run, True


# Read by every poll of a client that waits for its run without following its events.
_RUN_OF_PROJECT = DriverStatement(
    sa.select(runs).where(
        runs.c.id == sa.bindparam("run_id"), runs.c.project_id == sa.bindparam("project_id")
    )
)


async def get_run(db: Database, project_id: str, run_id: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        found = await _RUN_OF_PROJECT.rows(conn, {"run_id": run_id, "project_id": project_id})
    return render_run(found[0]) if found else None


async def list_runs(
    db: Database,
    project_id: str,
    *,
    status: str | None,
    agent_id: str | None,
    limit: int,
    after: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    query = sa.select(runs).where(runs.c.project_id == project_id)
    if status is not None:
        query = query.where(runs.c.status == status)
    if agent_id is not None:
        query = query.where(runs.c.agent_id == agent_id)
    async with db.read() as conn:
        rows, cursor = await page(conn, runs, query, limit=limit, after=after)
    return [render_run(row) for row in rows], cursor


async def continue_run(
    db: Database, project_id: str, run_id: str, message: str
) -> dict[str, Any] | None:
    """Add a user message to a completed run and queue it again (None if unknown)."""
    async with db.write() as tx:
        row = (
            await tx.conn.execute(
                sa.select(runs.c.status)
                .where(runs.c.id == run_id, runs.c.project_id == project_id)
                # Two concurrent continues: the second waits here, then sees `queued`.
                .with_for_update()
            )
        ).first()
        if row is None:
            return None
        if row.status != "completed":
            raise StateConflict(f"only a completed run can be continued; this run is {row.status}")
        position = await next_position(tx, run_id)
        await append_messages(tx, run_id, position, [{"role": "user", "content": message}])
        updated = await update_run(
            tx,
            run_id,
            {
                "status": "queued",
                "queued_at": now(),
                "turn_steps": 0,
                "turn_deadline": None,
                "attempts": 0,
                "completed_at": None,
                "error": None,
            },
            where=[runs.c.status == "completed"],
            events=status_events("queued"),
        )
    return render_run(updated)


async def cancel_run(db: Database, project_id: str, run_id: str) -> dict[str, Any] | None:
    """Cancel a run in any non-terminal state (None if unknown)."""
    async with db.write() as tx:
        row = await update_run(
            tx,
            run_id,
            {
                "status": "cancelled",
                "completed_at": now(),
                "worker_id": None,
                "lease_until": None,
                "lease_token": None,
                "pending_tool_calls": [],
                "tool_response_deadline": None,
            },
            where=[runs.c.project_id == project_id, runs.c.status.not_in(TERMINAL_STATUSES)],
            events=status_events("cancelled"),
        )
        if row is None:
            status = (
                await tx.conn.execute(
                    sa.select(runs.c.status).where(
                        runs.c.id == run_id, runs.c.project_id == project_id
                    )
                )
            ).scalar_one_or_none()
            if status is None:
                return None
            raise StateConflict(f"the run is already {status}")
    return render_run(row)
