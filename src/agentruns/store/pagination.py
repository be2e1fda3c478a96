"""Keyset pagination, newest first, with the last item's id as the cursor."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection


async def page(
    conn: AsyncConnection,
    table: sa.Table,
    query: sa.Select[Any],
    *,
    limit: int,
    after: str | None,
) -> tuple[list[sa.Row[Any]], str | None]:
    """Rows of `query` (over `table`) after the cursor, and the next cursor or None."""
    if after is not None:
        anchor = (
            await conn.execute(sa.select(table.c.created_at).where(table.c.id == after))
        ).first()
        if anchor is None:
            raise LookupError(after)
        query = query.where(
            sa.or_(
                table.c.created_at < anchor.created_at,
                sa.and_(table.c.created_at == anchor.created_at, table.c.id < after),
            )
        )
    query = query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit + 1)
    rows = list(await conn.execute(query))
    has_more = len(rows) > limit
    rows = rows[:limit]
    return rows, (str(rows[-1].id) if has_more else None)
