"""The executing worker's writes, each fenced on its lease token.

If the run was cancelled or its lease passed to another worker, the fenced
UPDATE matches nothing and `LeaseLost` is raised: the transaction rolls back
and the worker drops the run.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from agentruns.errors import LeaseLost
from agentruns.store.clock import now
from agentruns.store.database import (
    Database,
    WriteTurn,
    dumps_json,
    notify_column,
    without_nul,
)
from agentruns.store.messages import insert_from_array
from agentruns.store.notify import EVENTS_CHANNEL, RunEvent, events_payload
from agentruns.store.pg_statements import DriverStatement
from agentruns.store.queue import Lease
from agentruns.store.tables import Time, run_events
from agentruns.store.transitions import (
    WEBHOOK_STATUSES,
    EventSpec,
    render_known_run,
    update_run,
    update_statement,
)

# What the worker's writes match on: its lease, on a run still executing.
_FENCE = ("lease_token", "status")


async def commit_step(
    db: Database,
    lease: Lease,
    *,
    values: dict[str, Any] | None = None,
    events: Sequence[EventSpec] = (),
    messages: Sequence[dict[str, Any]] = (),
    position: int = 0,
    current: Mapping[str, Any] | None = None,
    turn: WriteTurn | None = None,
) -> None:
    """Atomically update the run, append events and messages (from `position`).

    `current`, the run object's columns as the row has them before this write, lets
    PostgreSQL render the run object that status events carry before the UPDATE, so that
    a status change is one statement too (unless a webhook is due: its outbox row goes in
    the same transaction, `update_run`). A `turn` already waited for (`Database.write_turn`)
    spares the write its own wait for a connection.
    """
    values = values or {}
    if (
        db.is_postgres
        and not any(isinstance(v, sa.ClauseElement) for v in values.values())
        and not _needs_transaction(values, events, current)
    ):
        # One statement does it all (see `_step_statement`).
        await _commit_step_in_one_statement(
            db, lease, values, events, current, messages, position, turn
        )
        return
    async with db.write(turn=turn) as tx:
        # Only whether it matched: the row is not kept while the write waits for its commit
        # (on SQLite, with thousands of others at times).
        if (
            await update_run(
                tx,
                lease.run_id,
                values,
                match={"lease_token": lease.token, "status": "in_progress"},
                events=events,
                messages=messages,
                position=position,
            )
            is None
        ):
            raise LeaseLost(f"run {lease.run_id} is no longer held by this worker")


def _needs_transaction(
    values: dict[str, Any], events: Sequence[EventSpec], current: Mapping[str, Any] | None
) -> bool:
    """Whether this write needs its transaction on PostgreSQL: a status change whose run
    object cannot be rendered from `current`, or that is due a webhook (its outbox row)."""
    if "status" not in values and not any(isinstance(spec, str) for spec in events):
        return False
    if current is None:
        return True
    status = values.get("status", current["status"])
    return status in WEBHOOK_STATUSES and bool(values.get("callback_url", current["callback_url"]))


def _rendered_events(
    values: dict[str, Any],
    events: Sequence[EventSpec],
    current: Mapping[str, Any] | None,
    updated_at: float,
) -> list[tuple[str, dict[str, Any]]]:
    """`events` with the run object in place of each type that stands for it (rendered from
    `current` and `values`)."""
    if current is None or not any(isinstance(spec, str) for spec in events):
        return [spec for spec in events if not isinstance(spec, str)]
    row = {**current, **{k: v for k, v in values.items() if k in current}}
    run, _ = render_known_run({**row, "updated_at": updated_at})
    return [(spec, run) if isinstance(spec, str) else spec for spec in events]


@functools.lru_cache(maxsize=32)
def _step_statement(columns: tuple[str, ...], notify: bool) -> DriverStatement:
    """PostgreSQL: the fenced UPDATE and the inserts of its events and messages, as one
    statement (data-modifying CTEs).

    Five round trips fewer than BEGIN, three statements and COMMIT, for the writes a run
    makes most. The inserts join the UPDATE's result: if the fence matched nothing, nothing
    is written and no row comes back. Events are numbered from the `event_seq` the UPDATE
    reserved; both arrive as arrays (type and JSON text per event, JSON text per message).
    """
    updated = update_statement(columns, _FENCE, full_row=False).cte("updated")
    created_at = sa.bindparam("inserted_at", type_=Time)
    new_events = (
        sa.func.unnest(
            sa.bindparam("event_types", type_=ARRAY(sa.Text)),
            sa.bindparam("event_data", type_=ARRAY(sa.Text)),
        )
        .table_valued("type", "data", with_ordinality="n")
        .render_derived()
    )
    insert_events = run_events.insert().from_select(
        ["run_id", "seq", "type", "data", "created_at"],
        sa.select(
            updated.c.id,
            updated.c.event_seq - sa.bindparam("added_events") + new_events.c.n,
            new_events.c.type,
            sa.cast(new_events.c.data, JSONB),
            created_at,
        ).join_from(updated, new_events, sa.true()),
    )
    insert_messages = insert_from_array(
        updated, sa.bindparam("first_position", type_=sa.Integer), created_at
    )
    columns_out: list[Any] = [updated.c.id, updated.c.event_seq]
    if notify:
        # The events ride along (see `notify.py`): other processes' readers need no read.
        first_seq = updated.c.event_seq - sa.bindparam("added_events") + 1
        payload = (
            updated.c.id
            + ":"
            + sa.bindparam("notify_type", type_=sa.Text)
            + ":"
            + sa.cast(first_seq, sa.Text)
            + ":"
            + sa.bindparam("notify_events", type_=sa.Text)
        )
        columns_out.append(notify_column(EVENTS_CHANNEL, payload))
    return DriverStatement(
        sa.select(*columns_out).add_cte(
            insert_events.cte("inserted_events"), insert_messages.cte("inserted_messages")
        )
    )


async def _commit_step_in_one_statement(
    db: Database,
    lease: Lease,
    values: dict[str, Any],
    events: Sequence[EventSpec],
    current: Mapping[str, Any] | None,
    messages: Sequence[dict[str, Any]],
    position: int,
    turn: WriteTurn | None,
) -> None:
    # The statement is rendered once a connection is ours: when the runs of a burst all
    # finish together, thousands of writes queue for one, and each would otherwise hold
    # its encoded events meanwhile (a completion's run object three times over).
    async with db.write(one_statement=True, turn=turn) as tx:
        updated_at = now()
        rendered = _rendered_events(values, events, current, updated_at)
        statement, params = _step_params(lease, values, rendered, messages, position, updated_at)
        rows = await statement.fetch(tx.conn, params)
        if not rows:
            raise LeaseLost(f"run {lease.run_id} is no longer held by this worker")
        if rendered:
            first = rows[0]["event_seq"] - len(rendered) + 1
            committed = [RunEvent(first + i, kind, data) for i, (kind, data) in enumerate(rendered)]
            await tx.announce_event(lease.run_id, rendered[-1][0], committed, notified=True)


def _step_params(
    lease: Lease,
    values: dict[str, Any],
    rendered: list[tuple[str, dict[str, Any]]],
    messages: Sequence[dict[str, Any]],
    position: int,
    updated_at: float,
) -> tuple[DriverStatement, dict[str, Any]]:
    encoded = [(kind, dumps_json(data)) for kind, data in rendered]
    params: dict[str, Any] = {
        f"set_{k}": without_nul(v) if isinstance(v, str) else v for k, v in values.items()
    }
    params.update(
        match_id=lease.run_id,
        match_lease_token=lease.token,
        match_status="in_progress",
        set_updated_at=updated_at,
        added_events=len(rendered),
        inserted_at=updated_at,
        event_types=[kind for kind, _ in rendered],
        event_data=[data for _, data in encoded],
        messages=[dumps_json(message) for message in messages],
        first_position=position,
    )
    if rendered:
        params.update(notify_type=rendered[-1][0], notify_events=events_payload(encoded))
    return _step_statement(tuple(values), bool(rendered)), params
