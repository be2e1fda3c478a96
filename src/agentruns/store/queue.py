"""The run queue: claim with a lease, heartbeat, and hand back what dead workers held.

A claim gives the run a fresh `lease_token`; every write of the executing
worker is fenced on it (see `execution.py`), so a worker that lost its lease
can never overwrite what the next owner does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by

from agentruns.store.clock import now
from agentruns.store.database import Database, Tx, notify_column
from agentruns.store.events import Appended, append, last_event_type
from agentruns.store.messages import messages_of
from agentruns.store.notify import EVENTS_CHANNEL, MAX_PAYLOAD_EVENTS_BYTES, RunEvent
from agentruns.store.pg_statements import DriverStatement
from agentruns.store.tables import Time, run_events, run_messages, runs
from agentruns.store.transitions import render_run, run_object_sql, status_events, update_run


@dataclass(frozen=True, slots=True)
class Lease:
    """What a worker holds while it executes a run."""

    run_id: str
    token: str
    worker_id: str


def _claim_statement(new_token: sa.ColumnElement[str]) -> Any:
    """Take the oldest queued runs, up to `limit`, in one statement; their new rows.

    PostgreSQL: concurrent claimers skip each other's rows. SQLite: BEGIN IMMEDIATE already
    serialises writers, and SQLAlchemy renders no FOR UPDATE there. Each run gets a fresh
    lease token, made by the database (`new_token`), and one event number.
    """
    # A CTE, evaluated once: as `id IN (subquery)` PostgreSQL may run the subquery again for
    # each row it scans, each time taking the next run, and so claim every queued run.
    oldest = (
        sa.select(runs.c.id)
        .where(runs.c.status == "queued")
        .order_by(runs.c.queued_at, runs.c.id)
        .limit(sa.bindparam("limit"))
        .with_for_update(skip_locked=True)
        .cte("oldest")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    ts = sa.bindparam("ts", type_=Time)
    return (
        runs.update()
        .where(runs.c.id == oldest.c.id, runs.c.status == "queued")
        .values(
            status="in_progress",
            worker_id=sa.bindparam("worker"),
            lease_token=new_token,
            lease_until=sa.bindparam("until", type_=Time),
            attempts=runs.c.attempts + 1,
            started_at=sa.func.coalesce(runs.c.started_at, ts),
            turn_deadline=sa.func.coalesce(runs.c.turn_deadline, ts + runs.c.timeout_s),
            updated_at=ts,
            event_seq=runs.c.event_seq + 1,
        )
        .returning(runs)
    )


def _claim_on_postgres() -> sa.Select[Any]:
    """PostgreSQL: the claim, each claimed run's `run.status` event (the run object rendered
    from the claimed row in SQL) and its notification, and each run's conversation, in one
    statement (data-modifying CTEs) sent without BEGIN and COMMIT."""
    claimed = _claim_statement(sa.cast(sa.func.gen_random_uuid(), sa.String)).cte("claimed")
    objects = sa.select(claimed.c.id, run_object_sql(claimed).label("run")).cte("objects")
    inserted = run_events.insert().from_select(
        ["run_id", "seq", "type", "data", "created_at"],
        sa.select(
            claimed.c.id,
            claimed.c.event_seq,
            sa.literal("run.status", sa.Text),
            objects.c.run,
            sa.bindparam("ts", type_=Time),
        ).join_from(claimed, objects, objects.c.id == claimed.c.id),
    )
    ordered = aggregate_order_by(run_messages.c.message, run_messages.c.position)
    conversation = (
        sa.select(sa.func.coalesce(sa.func.jsonb_agg(ordered), sa.cast(sa.literal("[]"), JSONB)))
        .where(run_messages.c.run_id == claimed.c.id)
        .scalar_subquery()
    )
    # The event rides in the notification when it fits (see `notify.events_payload`).
    body = sa.literal('[["run.status",', sa.Text) + sa.cast(objects.c.run, sa.Text) + "]]"
    payload = (
        claimed.c.id
        + ":run.status:"
        + sa.cast(claimed.c.event_seq, sa.Text)
        + ":"
        + sa.case(
            (sa.func.octet_length(body) <= MAX_PAYLOAD_EVENTS_BYTES, body), else_=sa.literal("")
        )
    )
    return (
        sa.select(
            claimed,
            objects.c.run,
            sa.type_coerce(conversation, JSONB).label("conversation"),
            notify_column(EVENTS_CHANNEL, payload),
        )
        .join_from(claimed, objects, objects.c.id == claimed.c.id)
        .add_cte(inserted.cte("inserted_events"))
    )


_CLAIM_ON_POSTGRES = DriverStatement(_claim_on_postgres())
_CLAIM_ON_SQLITE = _claim_statement(sa.func.lower(sa.func.hex(sa.func.randomblob(16))))


async def claim_runs(
    db: Database, worker_id: str, lease_s: float, limit: int
) -> list[tuple[Lease, Any]]:
    """Atomically take up to `limit` of the oldest queued runs; (lease, row) for each.

    One write for several claims (on PostgreSQL one statement, events and notifications
    included): under a deep queue the commit, not the claim, is what costs, and a worker
    with free slots would otherwise pay it once per run.
    """
    return [(lease, row) for lease, row, _ in await _claim(db, worker_id, lease_s, limit)]


async def claim_runs_to_execute(
    db: Database, worker_id: str, lease_s: float, limit: int
) -> list[tuple[Lease, Any, list[dict[str, Any]]]]:
    """`claim_runs`, with each run's conversation read in the same write: executing a run
    starts from it, and a read of its own would cost a round trip per run."""
    return await _claim(db, worker_id, lease_s, limit, with_messages=True)


async def _claim(
    db: Database, worker_id: str, lease_s: float, limit: int, *, with_messages: bool = False
) -> list[tuple[Lease, Any, list[dict[str, Any]]]]:
    ts = now()
    params = {"limit": limit, "worker": worker_id, "ts": ts, "until": ts + lease_s}
    if db.is_postgres:
        async with db.write(one_statement=True) as tx:
            rows = sorted(await _CLAIM_ON_POSTGRES.rows(tx.conn, params), key=_queue_order)
            for row in rows:
                event = RunEvent(row.event_seq, "run.status", row.run)
                await tx.announce_event(row.id, "run.status", [event], notified=True)
        return [(Lease(row.id, row.lease_token, worker_id), row, row.conversation) for row in rows]
    async with db.write() as tx:
        rows = sorted(await tx.conn.execute(_CLAIM_ON_SQLITE, params), key=_queue_order)
        if not rows:
            return []
        await append(
            tx, [Appended(row.id, row.event_seq, [("run.status", render_run(row))]) for row in rows]
        )
        conversations = await messages_of(tx, [row.id for row in rows]) if with_messages else {}
    return [
        (Lease(row.id, row.lease_token, worker_id), row, conversations.get(row.id, []))
        for row in rows
    ]


def _queue_order(row: Any) -> tuple[float, str]:
    return row.queued_at, row.id


async def claim_next_run(db: Database, worker_id: str, lease_s: float) -> tuple[Lease, Any] | None:
    """Atomically take the oldest queued run; (lease, row) or None when the queue is empty."""
    claimed = await claim_runs(db, worker_id, lease_s, 1)
    return claimed[0] if claimed else None


async def extend_leases(db: Database, leases: list[Lease], lease_s: float) -> set[str]:
    """Push the leases forward; returns the tokens still held (the others were lost)."""
    if not leases:
        return set()
    tokens = [lease.token for lease in leases]
    async with db.write(priority=True) as tx:  # late, they would be taken over
        result = await tx.conn.execute(
            runs.update()
            .where(runs.c.lease_token.in_(tokens), runs.c.status == "in_progress")
            .values(lease_until=now() + lease_s)
            .returning(runs.c.lease_token)
        )
        return {row.lease_token for row in result}


async def leases_held_by(db: Database, worker_id: str) -> list[Lease]:
    """The leases of the runs `worker_id` is executing, as the database has them."""
    held = sa.select(runs.c.id, runs.c.lease_token).where(
        runs.c.worker_id == worker_id, runs.c.status == "in_progress"
    )
    async with db.read() as conn:
        return [Lease(row.id, row.lease_token, worker_id) for row in await conn.execute(held)]


async def release_lease(db: Database, lease: Lease) -> bool:
    """Hand a run back to the queue (graceful shutdown): another worker resumes it."""
    async with db.write() as tx:
        row = await update_run(
            tx,
            lease.run_id,
            {
                "status": "queued",
                "queued_at": now(),
                "worker_id": None,
                "lease_token": None,
                "lease_until": None,
                # Not the run's fault: the attempt is not counted.
                "attempts": runs.c.attempts - 1,
            },
            where=[runs.c.lease_token == lease.token, runs.c.status == "in_progress"],
            events=await _requeue_events(tx, lease.run_id),
        )
    return row is not None


async def _requeue_events(tx: Any, run_id: str) -> list[Any]:
    events: list[Any] = []
    if await last_event_type(tx, run_id) == "message.delta":
        # The partial message streamed so far will not be completed: tell readers to drop it.
        events.append(("message.discarded", {"reason": "worker_lost"}))
    return [*events, *status_events("queued")]


async def requeue_expired_leases(db: Database, max_attempts: int, *, limit: int = 100) -> int:
    """Put runs whose worker died back in the queue, or fail them after `max_attempts`."""
    ts = now()
    expired = [runs.c.status == "in_progress", runs.c.lease_until < ts]
    async with db.read() as conn:
        # Most passes find nothing: don't take the write lock for that.
        if (await conn.execute(sa.select(runs.c.id).where(*expired).limit(1))).first() is None:
            return 0
    async with db.write() as tx:
        return await requeue_lost_runs(tx, expired, max_attempts, limit=limit, skip_locked=True)


async def requeue_lost_runs(
    tx: Tx,
    lost: list[sa.ColumnElement[bool]],
    max_attempts: int,
    *,
    limit: int = 100,
    skip_locked: bool = False,
) -> int:
    """Re-queue the in-progress runs matching `lost` (their worker is gone); how many.

    The attempt the lost worker made counts: after `max_attempts` the run fails with
    `worker_lost`. Readers of a partial message are told to drop it.
    """
    ts = now()
    found = (
        sa.select(runs.c.id, runs.c.attempts, runs.c.results)
        .where(*lost)
        .order_by(runs.c.id)
        .limit(limit)
        # The expiry reaper skips rows another writer holds (it comes back later); the
        # dead-worker reaper waits for them, since it deletes the worker row afterwards.
        .with_for_update(skip_locked=skip_locked)
    )
    count = 0
    for row in list(await tx.conn.execute(found)):
        release = {"worker_id": None, "lease_token": None, "lease_until": None}
        if row.attempts >= max_attempts:
            error = {
                "type": "worker_lost",
                "message": f"the run lost its worker {row.attempts} times; giving up",
            }
            changed = await update_run(
                tx,
                row.id,
                {
                    **release,
                    "status": "failed",
                    "error": error,
                    "results": [*row.results, {"type": "error", "error": error}],
                    "completed_at": ts,
                    "turn_deadline": None,
                },
                where=lost,
                events=status_events("failed"),
            )
        else:
            changed = await update_run(
                tx,
                row.id,
                {**release, "status": "queued", "queued_at": ts},
                where=lost,
                events=await _requeue_events(tx, row.id),
            )
        count += changed is not None
    return count
