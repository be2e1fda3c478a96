"""A run's conversation in the neutral message format (see engine/models/base.py)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from agentruns.store.clock import now
from agentruns.store.database import Database, Tx
from agentruns.store.tables import run_messages

MESSAGE_FORMAT_VERSION = 1

# Pre-built: SQLAlchemy spends far longer building a statement than running a built one.
_INSERT = run_messages.insert()
_ALL = (
    sa.select(run_messages.c.message)
    .where(run_messages.c.run_id == sa.bindparam("run_id"))
    .order_by(run_messages.c.position)
)


async def append_messages(
    tx: Tx, run_id: str, first_position: int, messages: list[dict[str, Any]]
) -> None:
    if not messages:
        return
    ts = now()
    await tx.conn.execute(
        _INSERT,
        [
            {
                "run_id": run_id,
                "position": first_position + i,
                "format_version": MESSAGE_FORMAT_VERSION,
                "message": message,
                "created_at": ts,
            }
            for i, message in enumerate(messages)
        ],
    )


def insert_from_array(
    owner: sa.CTE, first_position: sa.ColumnElement[int], inserted_at: sa.ColumnElement[float]
) -> sa.Insert:
    """PostgreSQL: an INSERT of the `messages` array parameter (JSON text each) as messages of
    the run in `owner` (a CTE with its `id`, one row or none), placed from `first_position`;
    for a data-modifying CTE of a statement that also writes the run."""
    new = (
        sa.func.unnest(sa.bindparam("messages", type_=ARRAY(sa.Text)))
        .table_valued("message", with_ordinality="n")
        .render_derived()
    )
    return run_messages.insert().from_select(
        ["run_id", "position", "format_version", "message", "created_at"],
        sa.select(
            owner.c.id,
            first_position + new.c.n - 1,
            sa.literal(MESSAGE_FORMAT_VERSION, sa.Integer),
            sa.cast(new.c.message, JSONB),
            inserted_at,
        ).join_from(owner, new, sa.true()),
    )


_OF_RUNS = (
    sa.select(run_messages.c.run_id, run_messages.c.message)
    .where(run_messages.c.run_id.in_(sa.bindparam("run_ids", expanding=True)))
    .order_by(run_messages.c.run_id, run_messages.c.position)
)


async def messages_of(tx: Tx, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The conversations of several runs, read in one statement of a write transaction."""
    conversations: dict[str, list[dict[str, Any]]] = {}
    for run_id, message in await tx.conn.execute(_OF_RUNS, {"run_ids": run_ids}):
        conversations.setdefault(run_id, []).append(message)
    return conversations


async def next_position(tx: Tx, run_id: str) -> int:
    top = (
        await tx.conn.execute(
            sa.select(sa.func.max(run_messages.c.position)).where(run_messages.c.run_id == run_id)
        )
    ).scalar_one_or_none()
    return 0 if top is None else top + 1


async def load_messages(db: Database, run_id: str) -> list[dict[str, Any]]:
    async with db.read() as conn:
        return list((await conn.execute(_ALL, {"run_id": run_id})).scalars())
