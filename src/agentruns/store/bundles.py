"""Bundles: a project's named sets of server-side tool specs (`default` is not stored here)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from agentruns.store.clock import iso, now
from agentruns.store.database import Database, Tx
from agentruns.store.tables import bundles


def render_bundle(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "description": row.description,
        "tools": row.tools,
        "builtin": False,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _key(project_id: str, name: str) -> sa.ColumnElement[bool]:
    return sa.and_(bundles.c.project_id == project_id, bundles.c.name == name)


def _insert(tx: Tx) -> Any:
    return (postgresql if tx.is_postgres else sqlite).insert(bundles)


async def create_bundle(
    db: Database, project_id: str, name: str, description: str, tools: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The new bundle, or None if the project already has one by that name."""
    ts = now()
    async with db.write() as tx:
        row = (
            await tx.conn.execute(
                _insert(tx)
                .values(
                    project_id=project_id,
                    name=name,
                    description=description,
                    tools=tools,
                    created_at=ts,
                    updated_at=ts,
                )
                .on_conflict_do_nothing(index_elements=["project_id", "name"])
                .returning(bundles)
            )
        ).first()
    return None if row is None else render_bundle(row)


async def put_bundle(
    db: Database, project_id: str, name: str, description: str, tools: list[dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """Create or replace a bundle; the bundle and whether it was created."""
    ts = now()
    async with db.write() as tx:
        insert = _insert(tx).values(
            project_id=project_id,
            name=name,
            description=description,
            tools=tools,
            created_at=ts,
            updated_at=ts,
        )
        row = (
            await tx.conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["project_id", "name"],
                    set_={"description": description, "tools": tools, "updated_at": ts},
                ).returning(bundles)
            )
        ).one()
    return render_bundle(row), row.created_at == ts


async def get_bundle(db: Database, project_id: str, name: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(bundles).where(_key(project_id, name)))).first()
    return None if row is None else render_bundle(row)


async def list_bundles(db: Database, project_id: str) -> list[dict[str, Any]]:
    query = sa.select(bundles).where(bundles.c.project_id == project_id).order_by(bundles.c.name)
    async with db.read() as conn:
        return [render_bundle(row) for row in await conn.execute(query)]


async def delete_bundle(db: Database, project_id: str, name: str) -> bool:
    async with db.write() as tx:
        result = await tx.conn.execute(bundles.delete().where(_key(project_id, name)))
    return bool(result.rowcount)
