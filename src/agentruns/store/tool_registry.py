"""Registered tool definitions: a new version per registration, agents use the latest."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from agentruns.store.clock import iso, now
from agentruns.store.database import Database
from agentruns.store.tables import tool_definitions as tools


def _render(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "namespace": row.namespace,
        "description": row.description,
        "parameters": row.parameters,
        "version": row.version,
        "created_at": iso(row.created_at),
    }


def _latest(project_id: str) -> sa.Select[Any]:
    newest = (
        sa.select(tools.c.namespace, tools.c.name, sa.func.max(tools.c.version).label("version"))
        .where(tools.c.project_id == project_id)
        .group_by(tools.c.namespace, tools.c.name)
        .subquery()
    )
    return (
        sa.select(tools)
        .join(
            newest,
            sa.and_(
                tools.c.namespace == newest.c.namespace,
                tools.c.name == newest.c.name,
                tools.c.version == newest.c.version,
            ),
        )
        .where(tools.c.project_id == project_id)
    )


async def register_tools(
    db: Database, project_id: str, definitions: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Store each definition as the next version of its (namespace, name)."""
    for attempt in range(5):
        try:
            return await _register(db, project_id, definitions)
        except sa.exc.IntegrityError:
            # Another registration of the same name took this version number: take the next.
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


async def _register(
    db: Database, project_id: str, definitions: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    registered = []
    async with db.write() as tx:
        for definition in definitions:
            key = sa.and_(
                tools.c.project_id == project_id,
                tools.c.namespace == definition["namespace"],
                tools.c.name == definition["name"],
            )
            top = (
                await tx.conn.execute(sa.select(sa.func.max(tools.c.version)).where(key))
            ).scalar_one_or_none()
            row = (
                await tx.conn.execute(
                    tools.insert()
                    .values(
                        project_id=project_id,
                        version=(top or 0) + 1,
                        created_at=now(),
                        **definition,
                    )
                    .returning(tools)
                )
            ).one()
            registered.append(_render(row))
    return registered


async def list_tools(db: Database, project_id: str, namespace: str | None) -> list[dict[str, Any]]:
    query = _latest(project_id).order_by(tools.c.namespace, tools.c.name)
    if namespace is not None:
        query = query.where(tools.c.namespace == namespace)
    async with db.read() as conn:
        return [_render(row) for row in await conn.execute(query)]


async def find_tools(
    db: Database, project_id: str, refs: set[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest definition of each (namespace, name) ref that exists."""
    if not refs:
        return {}
    query = _latest(project_id).where(sa.tuple_(tools.c.namespace, tools.c.name).in_(list(refs)))
    async with db.read() as conn:
        return {(row.namespace, row.name): _render(row) for row in await conn.execute(query)}
