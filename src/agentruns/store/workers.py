"""The registry of live worker processes, and handing back what a dead one held.

Every `serve` and `worker` process has a row here and refreshes its `heartbeat_at`
every few seconds. A row whose heartbeat is older than `dead_after_s` belongs to a
process that crashed, was killed or lost its machine: any other process re-queues
the runs it held (the same path as an expired lease: the attempt counts, readers get
`message.discarded`, `max_attempts` still applies), makes its in-flight webhook
attempts due again, and deletes the row. Leases stay the final safety net, for a
process that dies without ever registering. Times are each writer's clock, like
leases: keep the machines' clocks in sync (NTP) well within `dead_after_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agentruns.store.clock import now
from agentruns.store.database import Database
from agentruns.store.queue import requeue_lost_runs
from agentruns.store.tables import runs, workers
from agentruns.store.webhooks import requeue_deliveries_of_worker


@dataclass(frozen=True, slots=True)
class Reaped:
    """What one pass found: dead workers removed, and the runs and deliveries handed back."""

    workers: int = 0
    runs: int = 0
    deliveries: int = 0


async def register_worker(
    db: Database, worker_id: str, *, hostname: str, pid: int, started_at: float
) -> None:
    """Add this process to the registry (or refresh its row if it is there already)."""
    await heartbeat_worker(db, worker_id, hostname=hostname, pid=pid, started_at=started_at)


async def heartbeat_worker(
    db: Database, worker_id: str, *, hostname: str, pid: int, started_at: float
) -> bool:
    """Refresh the worker's heartbeat; False if its row was gone (it had been declared dead).

    A worker declared dead by mistake (a stalled process, a network split) just registers
    again: the runs it lost were re-queued and its fenced writes to them fail.
    """
    ts = now()
    async with db.write(priority=True) as tx:
        updated = await tx.conn.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(heartbeat_at=ts)
            .returning(workers.c.id)
        )
        if updated.first() is not None:
            return True
        await tx.conn.execute(
            workers.insert().values(
                id=worker_id, hostname=hostname, pid=pid, started_at=started_at, heartbeat_at=ts
            )
        )
    return False


async def unregister_worker(db: Database, worker_id: str) -> None:
    """A clean shutdown: hand back the webhook attempts still held, and remove the row.

    Runs are not touched: the worker hands its runs back itself when it drains.
    """
    async with db.write() as tx:
        await requeue_deliveries_of_worker(tx, worker_id)
        await tx.conn.execute(workers.delete().where(workers.c.id == worker_id))


async def list_workers(db: Database) -> list[dict[str, Any]]:
    """Every registered worker, oldest first, with how many runs each is executing."""
    running = (
        sa.select(sa.func.count())
        .where(runs.c.worker_id == workers.c.id, runs.c.status == "in_progress")
        .scalar_subquery()
    )
    query = sa.select(workers, running.label("running_runs")).order_by(
        workers.c.started_at, workers.c.id
    )
    async with db.read() as conn:
        return [dict(row._mapping) for row in await conn.execute(query)]


async def reap_dead_workers(
    db: Database, *, dead_after_s: float, max_attempts: int, exclude: str | None = None
) -> Reaped:
    """Hand back what every worker silent for `dead_after_s` held, and remove its row.

    Safe to run from many processes at once: each dead worker is reaped by whichever
    locks its row first. `exclude` is the caller itself, never judged.
    """
    cutoff = now() - dead_after_s
    stale = [workers.c.heartbeat_at < cutoff]
    if exclude is not None:
        stale.append(workers.c.id != exclude)
    async with db.read() as conn:
        # Most passes find nothing: don't take the write lock for that.
        dead = list((await conn.execute(sa.select(workers.c.id).where(*stale))).scalars())
    total = Reaped()
    for worker_id in dead:
        async with db.write() as tx:
            claim = (
                sa.select(workers.c.id)
                .where(workers.c.id == worker_id, *stale)
                .with_for_update(skip_locked=True)
            )
            if (await tx.conn.execute(claim)).first() is None:
                continue  # another process is reaping it, or it has just come back
            held = [runs.c.worker_id == worker_id, runs.c.status == "in_progress"]
            run_count = await requeue_lost_runs(tx, held, max_attempts, limit=10_000)
            delivery_count = await requeue_deliveries_of_worker(tx, worker_id)
            await tx.conn.execute(workers.delete().where(workers.c.id == worker_id))
        total = Reaped(total.workers + 1, total.runs + run_count, total.deliveries + delivery_count)
    return total
