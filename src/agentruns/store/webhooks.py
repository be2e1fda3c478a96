"""Webhooks in the database: each project's signing secret, and the delivery outbox.

A delivery row is written by `enqueue_delivery` in the same transaction as the
run's status change (see `transitions.update_run`), so a crash after commit
loses nothing. Dispatchers take due deliveries like workers take runs: one
transaction picks them (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the write lock
on SQLite), numbers the attempt and leases it with a fresh token; the outcome
is recorded only under that token. So one attempt is sent by one dispatcher,
and an attempt whose dispatcher died is noted as lost and made again after
its lease expires.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agentruns.store.clock import iso, new_id, now
from agentruns.store.database import Database, Tx
from agentruns.store.tables import runs, webhook_attempts, webhook_deliveries, webhook_secrets

SECRET_PREFIX = "whsec_"
# After a rotation the old secret keeps signing too, so receivers can switch at leisure.
PREVIOUS_SECRET_GRACE_S = 24 * 3600

# The dispatcher waits on this pseudo run id of the notifier: a new delivery wakes it
# at once, in this process and (through PostgreSQL NOTIFY) in every other one.
DISPATCH_WAKE_KEY = "webhook-deliveries"

LOST_ATTEMPT_ERROR = (
    "the dispatcher stopped (crash or restart) before the outcome was recorded; "
    "the receiver may have got this attempt"
)

deliveries = webhook_deliveries
attempts = webhook_attempts


class StateConflict(Exception):
    """The delivery's state forbids the change; the message says why."""


# --- signing secrets -------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _render_secret(row: Any, ts: float) -> dict[str, Any]:
    previous_valid = row.previous_secret is not None and (row.previous_expires_at or 0) > ts
    return {
        "secret": row.secret,
        "created_at": iso(row.created_at),
        "previous_secret_expires_at": iso(row.previous_expires_at) if previous_valid else None,
    }


def _select_secret(project_id: str) -> sa.Select[Any]:
    return sa.select(webhook_secrets).where(webhook_secrets.c.project_id == project_id)


async def _ensure_secret(db: Database, project_id: str) -> Any:
    """The project's secret row, created on first use."""
    for _ in range(3):
        async with db.read() as conn:
            row = (await conn.execute(_select_secret(project_id))).first()
        if row is not None:
            return row
        try:
            async with db.write() as tx:
                return (
                    await tx.conn.execute(
                        webhook_secrets.insert()
                        .values(project_id=project_id, secret=new_secret(), created_at=now())
                        .returning(webhook_secrets)
                    )
                ).one()
        except sa.exc.IntegrityError:
            continue  # a concurrent first use created it: read that one
    raise RuntimeError(f"cannot create the webhook secret of project {project_id}")


async def get_secret(db: Database, project_id: str) -> dict[str, Any]:
    """The project's webhook secret (created on first use)."""
    return _render_secret(await _ensure_secret(db, project_id), now())


async def rotate_secret(db: Database, project_id: str) -> dict[str, Any]:
    """Replace the secret; the old one keeps signing for `PREVIOUS_SECRET_GRACE_S`."""
    await _ensure_secret(db, project_id)
    ts = now()
    async with db.write() as tx:
        current = (await tx.conn.execute(_select_secret(project_id).with_for_update())).one()
        row = (
            await tx.conn.execute(
                webhook_secrets.update()
                .where(webhook_secrets.c.project_id == project_id)
                .values(
                    secret=new_secret(),
                    created_at=ts,
                    previous_secret=current.secret,
                    previous_expires_at=ts + PREVIOUS_SECRET_GRACE_S,
                )
                .returning(webhook_secrets)
            )
        ).one()
    return _render_secret(row, ts)


async def signing_secrets(db: Database, project_id: str) -> list[str]:
    """The secrets to sign with now: the current one, and the previous while it is valid."""
    row = await _ensure_secret(db, project_id)
    keys = [row.secret]
    if row.previous_secret is not None and (row.previous_expires_at or 0) > now():
        keys.append(row.previous_secret)
    return keys


# --- the outbox ------------------------------------------------------------------------


async def enqueue_delivery(tx: Tx, run: Any, payload: dict[str, Any]) -> str:
    """Add a delivery of `payload` to the run's `callback_url`, due now; its id."""
    ts = now()
    delivery_id = new_id()
    await tx.conn.execute(
        deliveries.insert().values(
            id=delivery_id,
            project_id=run.project_id,
            run_id=run.id,
            event_type=payload["type"],
            url=run.callback_url,
            payload=payload,
            status="pending",
            attempts=0,
            series_start=0,
            next_attempt_at=ts,
            created_at=ts,
            updated_at=ts,
        )
    )
    await tx.announce_event(DISPATCH_WAKE_KEY, "webhook.due")
    return delivery_id


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """An attempt a dispatcher holds: send it, then record the outcome under `token`."""

    id: str
    project_id: str
    run_id: str
    url: str
    payload: dict[str, Any]
    attempt: int
    # 1 for the first attempt of a retry series (the first send, or a redelivery).
    series_attempt: int
    token: str
    claimed_at: float


async def next_due_at(db: Database) -> float | None:
    """When the earliest unfinished delivery is due (None if there is none)."""
    async with db.read() as conn:
        value = (await conn.execute(sa.select(sa.func.min(deliveries.c.next_attempt_at)))).scalar()
    return None if value is None else float(value)


async def claim_due_deliveries(
    db: Database, *, limit: int, lease_s: float, worker_id: str | None = None
) -> list[ClaimedDelivery]:
    """Take up to `limit` due deliveries, each as a new numbered attempt leased for `lease_s`.

    `worker_id` names the holder, so that its attempts are made again as soon as it is
    found dead (`requeue_deliveries_of_worker`) instead of when the lease expires.
    """
    ts = now()
    due = deliveries.c.next_attempt_at <= ts
    async with db.read() as conn:
        # Most passes find nothing: don't take the write lock for that.
        if (await conn.execute(sa.select(deliveries.c.id).where(due).limit(1))).first() is None:
            return []
    candidates = (
        sa.select(deliveries)
        .where(due)
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed: list[ClaimedDelivery] = []
    async with db.write() as tx:
        for row in list(await tx.conn.execute(candidates)):
            if row.status == "sending":
                # Its lease expired: whoever held it died mid-attempt. Say so in the log.
                await tx.conn.execute(
                    attempts.insert().values(
                        delivery_id=row.id,
                        attempt=row.attempts,
                        started_at=row.updated_at,
                        finished_at=ts,
                        error=LOST_ATTEMPT_ERROR,
                        next_attempt_at=ts,
                    )
                )
            token = new_id()
            await tx.conn.execute(
                deliveries.update()
                .where(deliveries.c.id == row.id)
                .values(
                    status="sending",
                    attempts=row.attempts + 1,
                    lease_token=token,
                    next_attempt_at=ts + lease_s,
                    updated_at=ts,
                    worker_id=worker_id,
                )
            )
            claimed.append(
                ClaimedDelivery(
                    id=row.id,
                    project_id=row.project_id,
                    run_id=row.run_id,
                    url=row.url,
                    payload=row.payload,
                    attempt=row.attempts + 1,
                    series_attempt=row.attempts + 1 - row.series_start,
                    token=token,
                    claimed_at=ts,
                )
            )
    return claimed


async def requeue_deliveries_of_worker(tx: Tx, worker_id: str) -> int:
    """Make the attempts a dead worker held due now; how many.

    The next claim notes each one as lost (the receiver may have got it) and sends it again,
    exactly as after a lease expiry, only sooner.
    """
    result = await tx.conn.execute(
        deliveries.update()
        .where(deliveries.c.worker_id == worker_id, deliveries.c.status == "sending")
        .values(next_attempt_at=now())
        .returning(deliveries.c.id)
    )
    count = len(result.all())
    if count:
        await tx.announce_event(DISPATCH_WAKE_KEY, "webhook.due")
    return count


async def record_attempt(
    db: Database,
    claimed: ClaimedDelivery,
    *,
    delivered: bool,
    status_code: int | None,
    error: str | None,
    next_attempt_at: float | None,
) -> bool:
    """Record the outcome of a held attempt; False if the lease was lost (nothing written).

    Not delivered and no `next_attempt_at` means the delivery has failed for good.
    """
    ts = now()
    finished = delivered or next_attempt_at is None
    status = "delivered" if delivered else "failed" if finished else "pending"
    async with db.write() as tx:
        held = (
            await tx.conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.id == claimed.id,
                    deliveries.c.lease_token == claimed.token,
                    deliveries.c.status == "sending",
                )
                .values(
                    status=status,
                    lease_token=None,
                    next_attempt_at=None if finished else next_attempt_at,
                    updated_at=ts,
                    finished_at=ts if finished else None,
                )
                .returning(deliveries.c.id)
            )
        ).first()
        if held is None:
            return False
        await tx.conn.execute(
            attempts.insert().values(
                delivery_id=claimed.id,
                attempt=claimed.attempt,
                started_at=claimed.claimed_at,
                finished_at=ts,
                status_code=status_code,
                error=error,
                next_attempt_at=None if finished else next_attempt_at,
            )
        )
    return True


# --- the API's view --------------------------------------------------------------------


def _render_delivery(row: Any, attempt_rows: list[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "run_id": row.run_id,
        "type": row.event_type,
        "url": row.url,
        "status": row.status,
        "attempt_count": row.attempts,
        # While sending, the column holds the lease expiry: not a scheduled attempt.
        "next_attempt_at": iso(row.next_attempt_at) if row.status == "pending" else None,
        "created_at": iso(row.created_at),
        "finished_at": iso(row.finished_at),
        "attempts": [
            {
                "attempt": a.attempt,
                "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at),
                "duration_ms": round((a.finished_at - a.started_at) * 1000),
                "status_code": a.status_code,
                "error": a.error,
                "next_attempt_at": iso(a.next_attempt_at),
            }
            for a in attempt_rows
        ],
    }


async def _render_all(conn: Any, rows: list[Any]) -> list[dict[str, Any]]:
    if not rows:
        return []
    by_delivery: dict[str, list[Any]] = {row.id: [] for row in rows}
    query = (
        sa.select(attempts)
        .where(attempts.c.delivery_id.in_(list(by_delivery)))
        .order_by(attempts.c.delivery_id, attempts.c.attempt)
    )
    for attempt in await conn.execute(query):
        by_delivery[attempt.delivery_id].append(attempt)
    return [_render_delivery(row, by_delivery[row.id]) for row in rows]


async def list_run_deliveries(
    db: Database, project_id: str, run_id: str
) -> list[dict[str, Any]] | None:
    """Every delivery of the run with its attempts, oldest first; None if the run is unknown."""
    async with db.read() as conn:
        owner = (
            await conn.execute(
                sa.select(runs.c.id).where(runs.c.id == run_id, runs.c.project_id == project_id)
            )
        ).first()
        if owner is None:
            return None
        rows = list(
            await conn.execute(
                sa.select(deliveries)
                .where(deliveries.c.run_id == run_id)
                .order_by(deliveries.c.created_at, deliveries.c.id)
            )
        )
        return await _render_all(conn, rows)


async def redeliver(db: Database, project_id: str, delivery_id: str) -> dict[str, Any] | None:
    """Send the delivery again now (same `webhook-id`), with a fresh retry series.

    None if unknown; `StateConflict` while an attempt is in flight.
    """
    ts = now()
    async with db.write() as tx:
        row = (
            await tx.conn.execute(
                sa.select(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.project_id == project_id)
                .with_for_update()
            )
        ).first()
        if row is None:
            return None
        if row.status == "sending":
            raise StateConflict(
                "an attempt of this delivery is in flight; redeliver once it has finished"
            )
        updated = (
            await tx.conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id)
                .values(
                    status="pending",
                    series_start=row.attempts,
                    next_attempt_at=ts,
                    finished_at=None,
                    updated_at=ts,
                )
                .returning(deliveries)
            )
        ).one()
        await tx.announce_event(DISPATCH_WAKE_KEY, "webhook.due")
        return (await _render_all(tx.conn, [updated]))[0]
