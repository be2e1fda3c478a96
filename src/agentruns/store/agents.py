"""Agents and their versions: every update writes a new immutable version."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from agentruns.store.clock import iso, new_id, now
from agentruns.store.database import Database, Tx
from agentruns.store.pagination import page
from agentruns.store.tables import agent_versions, agents


def render_agent(row: Any, spec: dict[str, Any], version: int) -> dict[str, Any]:
    """The agent object of the API."""
    return {
        "id": row.id,
        **spec,
        "version": version,
        "published_version": row.published_version,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


# Pre-built for the path of every new run (building a statement costs more than running it).
_LIVE_VERSIONS = sa.select(agents.c.latest_version, agents.c.published_version).where(
    agents.c.id == sa.bindparam("agent_id"),
    agents.c.project_id == sa.bindparam("project_id"),
    agents.c.deleted_at.is_(None),
)
_SPEC = sa.select(agent_versions.c.spec).where(
    agent_versions.c.agent_id == sa.bindparam("agent_id"),
    agent_versions.c.version == sa.bindparam("version"),
)
# A version's spec never changes once written, so every process may keep the recent ones.
# Callers treat a spec as read-only.
_SPEC_CACHE: dict[tuple[str, int], dict[str, Any]] = {}
SPEC_CACHE_SIZE = 512
# The version a new run of (project, agent, published?) pinned last: a hint that spares a
# read, never trusted (see `get_pinned_spec`).
_PINNED_CACHE: dict[tuple[str, str, bool], int] = {}


async def _version_spec(conn: Any, agent_id: str, version: int) -> dict[str, Any] | None:
    key = (agent_id, version)
    spec = _SPEC_CACHE.get(key)
    if spec is None:
        spec = (await conn.execute(_SPEC, {"agent_id": agent_id, "version": version})).scalar()
        if spec is not None:
            if len(_SPEC_CACHE) >= SPEC_CACHE_SIZE:
                del _SPEC_CACHE[next(iter(_SPEC_CACHE))]  # the oldest entry
            _SPEC_CACHE[key] = spec
    return spec


def _live(project_id: str, agent_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        agents.c.id == agent_id, agents.c.project_id == project_id, agents.c.deleted_at.is_(None)
    )


async def create_agent(db: Database, project_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    agent_id, ts = new_id(), now()
    async with db.write() as tx:
        await tx.conn.execute(
            agents.insert().values(
                id=agent_id, project_id=project_id, latest_version=1, created_at=ts, updated_at=ts
            )
        )
        await _insert_version(tx, agent_id, 1, spec, ts)
        row = (await tx.conn.execute(sa.select(agents).where(agents.c.id == agent_id))).one()
    return render_agent(row, spec, 1)


async def _insert_version(
    tx: Tx, agent_id: str, version: int, spec: dict[str, Any], ts: float
) -> None:
    await tx.conn.execute(
        agent_versions.insert().values(agent_id=agent_id, version=version, spec=spec, created_at=ts)
    )


async def get_agent(
    db: Database, project_id: str, agent_id: str, *, version: int | None = None
) -> dict[str, Any] | None:
    """The agent at `version` (default: latest), or None if unknown to this project."""
    async with db.read() as conn:
        row = (await conn.execute(sa.select(agents).where(_live(project_id, agent_id)))).first()
        if row is None:
            return None
        wanted = version or row.latest_version
        spec = (
            await conn.execute(
                sa.select(agent_versions.c.spec).where(
                    agent_versions.c.agent_id == agent_id, agent_versions.c.version == wanted
                )
            )
        ).scalar_one_or_none()
    return None if spec is None else render_agent(row, spec, wanted)


async def get_agent_spec(db: Database, agent_id: str, version: int) -> dict[str, Any] | None:
    """A pinned version's spec, even of a deleted agent (runs keep what they started with)."""
    if (agent_id, version) in _SPEC_CACHE:
        return _SPEC_CACHE[agent_id, version]
    async with db.read() as conn:
        return await _version_spec(conn, agent_id, version)


async def list_agents(
    db: Database, project_id: str, *, limit: int, after: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    query = (
        sa.select(agents, agent_versions.c.spec)
        .join(
            agent_versions,
            sa.and_(
                agent_versions.c.agent_id == agents.c.id,
                agent_versions.c.version == agents.c.latest_version,
            ),
        )
        .where(agents.c.project_id == project_id, agents.c.deleted_at.is_(None))
    )
    async with db.read() as conn:
        rows, cursor = await page(conn, agents, query, limit=limit, after=after)
    return [render_agent(row, row.spec, row.latest_version) for row in rows], cursor


async def update_agent(
    db: Database, project_id: str, agent_id: str, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """Write a new version with `changes` applied over the latest; None if unknown."""
    ts = now()
    async with db.write() as tx:
        row = (
            await tx.conn.execute(
                agents.update()
                .where(_live(project_id, agent_id))
                .values(latest_version=agents.c.latest_version + 1, updated_at=ts)
                .returning(agents)
            )
        ).first()
        if row is None:
            return None
        previous = (
            await tx.conn.execute(
                sa.select(agent_versions.c.spec).where(
                    agent_versions.c.agent_id == agent_id,
                    agent_versions.c.version == row.latest_version - 1,
                )
            )
        ).scalar_one()
        spec = {**previous, **changes}
        await _insert_version(tx, agent_id, row.latest_version, spec, ts)
    return render_agent(row, spec, row.latest_version)


async def delete_agent(db: Database, project_id: str, agent_id: str) -> bool:
    """Hide the agent; its versions stay so that its runs can still be read and continued."""
    async with db.write() as tx:
        result = await tx.conn.execute(
            agents.update().where(_live(project_id, agent_id)).values(deleted_at=now())
        )
    return result.rowcount > 0


async def publish_agent(
    db: Database, project_id: str, agent_id: str, version: int | None
) -> dict[str, Any] | None:
    """Mark `version` (default: latest) as what `production` runs. Raises ValueError if unknown."""
    async with db.write() as tx:
        row = (await tx.conn.execute(sa.select(agents).where(_live(project_id, agent_id)))).first()
        if row is None:
            return None
        target = version or row.latest_version
        if not 1 <= target <= row.latest_version:
            raise ValueError(f"agent has no version {target} (latest is {row.latest_version})")
        row = (
            await tx.conn.execute(
                agents.update()
                .where(agents.c.id == agent_id)
                .values(published_version=target, updated_at=now())
                .returning(agents)
            )
        ).one()
        spec = (
            await tx.conn.execute(
                sa.select(agent_versions.c.spec).where(
                    agent_versions.c.agent_id == agent_id,
                    agent_versions.c.version == row.latest_version,
                )
            )
        ).scalar_one()
    return render_agent(row, spec, row.latest_version)


async def get_pinned_spec(
    db: Database, project_id: str, agent_id: str, *, published: bool, cached: bool = False
) -> tuple[int | None, dict[str, Any] | None]:
    """(version, spec) a new run pins: the latest, or the published one (None if none is).

    (None, None) when the agent is unknown to this project. With `cached`, the version this
    process last read may answer instead of the database: it may be stale, which
    `runs.create_run` finds out as it inserts the run (`AgentChanged`).
    """
    key = (project_id, agent_id, published)
    if cached and key in _PINNED_CACHE:
        version = _PINNED_CACHE[key]
        spec = await get_agent_spec(db, agent_id, version)
        if spec is not None:
            return version, spec
    params = {"agent_id": agent_id, "project_id": project_id}
    async with db.read() as conn:
        row = (await conn.execute(_LIVE_VERSIONS, params)).first()
        if row is None:
            _PINNED_CACHE.pop(key, None)
            return None, None
        version = row.published_version if published else row.latest_version
        if version is None:
            _PINNED_CACHE.pop(key, None)
            return None, {}
        spec = await _version_spec(conn, agent_id, version)
    assert spec is not None, "an agent's pinned version always exists"
    if len(_PINNED_CACHE) >= SPEC_CACHE_SIZE and key not in _PINNED_CACHE:
        del _PINNED_CACHE[next(iter(_PINNED_CACHE))]  # the oldest entry
    _PINNED_CACHE[key] = version
    return version, spec
