"""Changing a run: one UPDATE that reserves event numbers, then the events, in one transaction.

The run object is rendered here because `run.status` and terminal events carry
it as their data: what a reader sees in the event is the row as committed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by

from agentruns.store.clock import iso, now
from agentruns.store.database import Tx, dumps_json, without_nul
from agentruns.store.events import Appended, append
from agentruns.store.tables import runs
from agentruns.store.webhooks import enqueue_delivery

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
# A run with a callback_url gets a webhook when it reaches one of these.
WEBHOOK_STATUSES = frozenset({"awaiting_tool_calls", *TERMINAL_STATUSES})

# An event is either a type whose data is the run object, or (type, data).
EventSpec = str | tuple[str, dict[str, Any]]


# Where `tool_calls.claim_tool_call` keeps a claim inside a `pending_tool_calls` entry.
CLAIM_KEY = "claim"


def public_call(call: dict[str, Any]) -> dict[str, Any]:
    """A pending tool call as the API shows it (`{id, name, arguments}`): without its claim,
    which is bookkeeping between the callers' processes, not part of the run."""
    return {key: value for key, value in call.items() if key != CLAIM_KEY}


def render_run(row: Any) -> dict[str, Any]:
    """The run object of the API."""
    return {
        "id": row.id,
        "user_id": row.project_id,
        "agent_id": row.agent_id,
        "chat_id": row.agent_id,
        "agent_version": row.agent_version,
        "status": row.status,
        "vars": row.vars,
        "results": row.results,
        "last_agent_message": row.last_agent_message,
        "pending_tool_calls": [public_call(call) for call in row.pending_tool_calls],
        "callback_url": row.callback_url,
        "bundle": row.bundle,
        "environment": row.environment,
        "usage": row.usage,
        "error": row.error,
        "metadata": row.metadata,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "started_at": iso(row.started_at),
        "completed_at": iso(row.completed_at),
    }


def iso_sql(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """`clock.iso` in PostgreSQL."""
    utc = sa.func.timezone("UTC", sa.func.to_timestamp(column))
    return sa.func.to_char(utc, sa.literal('YYYY-MM-DD"T"HH24:MI:SS.US"Z"', sa.Text))


def _public_calls_sql(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """`public_call` of each pending call, in PostgreSQL."""
    calls = (
        sa.func.jsonb_array_elements(column)
        .table_valued("value", with_ordinality="n")
        .render_derived()
    )
    public = calls.c.value.op("-")(sa.literal(CLAIM_KEY, sa.Text))
    return (
        sa.select(
            sa.func.coalesce(
                sa.func.jsonb_agg(aggregate_order_by(public, calls.c.n)),
                sa.cast(sa.literal("[]"), JSONB),
            )
        )
        .select_from(calls)
        .scalar_subquery()
    )


def run_object_sql(row: Any) -> sa.ColumnElement[Any]:
    """PostgreSQL: `render_run` of `row` (a CTE or table with the runs' columns), as JSONB.

    For statements that write a run's events with the run itself, where the run object is
    the row the statement leaves. Tests hold it to `render_run` field by field.
    """
    c = row.c
    fields: dict[str, Any] = {
        "id": c.id,
        "user_id": c.project_id,
        "agent_id": c.agent_id,
        "chat_id": c.agent_id,
        "agent_version": c.agent_version,
        "status": c.status,
        "vars": c.vars,
        "results": c.results,
        "last_agent_message": c.last_agent_message,
        "pending_tool_calls": _public_calls_sql(c.pending_tool_calls),
        "callback_url": c.callback_url,
        "bundle": c.bundle,
        "environment": c.environment,
        "usage": c.usage,
        "error": c.error,
        "metadata": c.metadata,
        "created_at": iso_sql(c.created_at),
        "updated_at": iso_sql(c.updated_at),
        "started_at": iso_sql(c.started_at),
        "completed_at": iso_sql(c.completed_at),
    }
    arguments = [part for key, value in fields.items() for part in (sa.literal(key), value)]
    return sa.func.jsonb_build_object(*arguments, type_=JSONB)


def render_known_run(columns: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """`render_run` of a row known from its column values instead of read back, and its
    JSON: through JSON and back, as a later read returns it (U+0000 replaced, see
    `dumps_json`), so that what is answered or announced now says what a read says later."""
    encoded = dumps_json(render_run(SimpleNamespace(**columns)))
    return orjson.loads(encoded), encoded


def status_events(status: str) -> list[EventSpec]:
    """`run.status`, plus the terminal event when the status is terminal."""
    events: list[EventSpec] = ["run.status"]
    if status in TERMINAL_STATUSES:
        events.append(f"run.{status}")
    return events


def _returning(full_row: bool) -> tuple[Any, ...]:
    """What an update sends back: the whole row, or only what numbering events needs."""
    return (runs,) if full_row else (runs.c.id, runs.c.event_seq)


@functools.lru_cache(maxsize=128)
def update_statement(columns: tuple[str, ...], match: tuple[str, ...], full_row: bool) -> Any:
    """The UPDATE setting `columns` where the run's `match` columns equal given values.

    Built once per shape: constructing and cache-keying a statement costs SQLAlchemy
    ten times what executing a pre-built one does, and a run makes dozens of updates.
    """
    return (
        runs.update()
        .where(
            runs.c.id == sa.bindparam("match_id"),
            *(runs.c[name] == sa.bindparam(f"match_{name}") for name in match),
        )
        .values(
            {
                **{name: sa.bindparam(f"set_{name}") for name in columns},
                "updated_at": sa.bindparam("set_updated_at"),
                "event_seq": runs.c.event_seq + sa.bindparam("added_events"),
            }
        )
        .returning(*_returning(full_row))
    )


async def update_run(
    tx: Tx,
    run_id: str,
    values: dict[str, Any],
    *,
    match: dict[str, Any] | None = None,
    where: Sequence[sa.ColumnElement[bool]] = (),
    events: Sequence[EventSpec] = (),
    messages: Sequence[dict[str, Any]] = (),
    position: int = 0,
) -> Any | None:
    """Apply `values` if the run's `match` columns equal theirs and `where` holds, and append
    `events` and `messages` (placed from `position`); the new row, or None.

    Plain values and `match` use a pre-built statement; a value that is an SQL expression,
    or any `where` condition, builds one for this call (for the rarely taken paths).
    """
    if {"id", "updated_at", "event_seq"} & (values.keys() | (match or {}).keys()):
        raise ValueError("update_run sets id, updated_at and event_seq itself")
    values = {k: without_nul(v) if isinstance(v, str) else v for k, v in values.items()}
    match = match or {}
    # A token flush needs only its event numbers: skip sending back the growing results.
    needs_row = bool(values) or any(isinstance(spec, str) for spec in events)
    # `col = :value` never matches a NULL; the statement built per call says IS NULL.
    plain = not any(v is None for v in match.values())
    if where or not plain or any(isinstance(v, sa.ClauseElement) for v in values.values()):
        statement = (
            runs.update()
            .where(runs.c.id == run_id, *(runs.c[k] == v for k, v in match.items()), *where)
            .values(**values, updated_at=now(), event_seq=runs.c.event_seq + len(events))
            .returning(*_returning(needs_row))
        )
        row = (await tx.conn.execute(statement)).first()
    else:
        statement = update_statement(tuple(values), tuple(match), needs_row)
        params = {f"set_{k}": v for k, v in values.items()}
        params.update({f"match_{k}": v for k, v in match.items()})
        params.update(match_id=run_id, set_updated_at=now(), added_events=len(events))
        row = (await tx.conn.execute(statement, params)).first()
    if row is None:
        return None
    run_object: dict[str, Any] | None = None
    status = values.get("status")
    if status in WEBHOOK_STATUSES and row.callback_url:
        # The outbox row commits with the status change, or neither does.
        run_object = render_run(row)
        await enqueue_delivery(tx, row, {"type": f"run.{status}", "data": run_object})
    if not events and not messages:
        return row
    rendered: list[tuple[str, dict[str, Any]]] = []
    for spec in events:
        if isinstance(spec, str):
            run_object = run_object or render_run(row)
            rendered.append((spec, run_object))
        else:
            rendered.append(spec)
    # On PostgreSQL one statement, which also carries the events' notification.
    first_seq = row.event_seq - len(events) + 1
    await append(tx, [Appended(run_id, first_seq, rendered, position, list(messages))])
    if values.get("status") == "queued":
        await tx.announce_queued()
    return row
