"""Projects and their API keys (stored only as SHA-256 hashes)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import sqlalchemy as sa

from agentruns.store.clock import new_id, now
from agentruns.store.database import Database, Tx
from agentruns.store.tables import api_keys, projects

DEFAULT_PROJECT = "default"
KEY_PREFIX = "ar_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def ensure_project(tx: Tx, name: str) -> str:
    """The id of the project called `name`, created if new."""
    row = (await tx.conn.execute(sa.select(projects.c.id).where(projects.c.name == name))).first()
    if row is not None:
        return str(row.id)
    project_id = new_id()
    await tx.conn.execute(projects.insert().values(id=project_id, name=name, created_at=now()))
    return project_id


async def create_api_key(db: Database, project: str | None = None) -> tuple[str, str]:
    """Create a key for `project` (default project if None); return (key, project_id)."""
    async with db.write() as tx:
        return await _insert_key(tx, project or DEFAULT_PROJECT)


async def create_first_api_key(db: Database) -> str | None:
    """A key for the default project if the database has no key yet, else None.

    Several `serve` processes may start together on a fresh database: exactly one of them
    creates the key (PostgreSQL: under an advisory lock; SQLite: the write lock).
    """
    async with db.write() as tx:
        if tx.is_postgres:
            await tx.conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_FIRST_KEY_LOCK)))
        count = (await tx.conn.execute(sa.select(sa.func.count()).select_from(api_keys))).scalar()
        if count:
            return None
        key, _project_id = await _insert_key(tx, DEFAULT_PROJECT)
    return key


# Any constant distinct from the migrations' lock (store/migrations/env.py).
_FIRST_KEY_LOCK = 727275


async def _insert_key(tx: Tx, project: str) -> tuple[str, str]:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    project_id = await ensure_project(tx, project)
    await tx.conn.execute(
        api_keys.insert().values(
            id=new_id(),
            project_id=project_id,
            prefix=key[:10],
            key_hash=hash_key(key),
            created_at=now(),
        )
    )
    return key, project_id


async def authenticate(db: Database, key: str) -> str | None:
    """The project id of a valid, unrevoked key, else None."""
    async with db.read() as conn:
        row = (
            await conn.execute(
                sa.select(api_keys.c.project_id).where(
                    api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None)
                )
            )
        ).first()
    return None if row is None else str(row.project_id)


async def list_api_keys(db: Database) -> list[dict[str, Any]]:
    query = (
        sa.select(
            api_keys.c.id,
            api_keys.c.prefix,
            projects.c.name.label("project"),
            api_keys.c.created_at,
            api_keys.c.revoked_at,
        )
        .join(projects, projects.c.id == api_keys.c.project_id)
        .order_by(api_keys.c.created_at)
    )
    async with db.read() as conn:
        return [dict(row._mapping) for row in await conn.execute(query)]


async def count_api_keys(db: Database) -> int:
    async with db.read() as conn:
        return int(
            (await conn.execute(sa.select(sa.func.count()).select_from(api_keys))).scalar_one()
        )


async def revoke_api_key(db: Database, key_id: str) -> bool:
    """Revoke by id or by the shown prefix; False unless exactly one active key matches."""
    match = sa.and_(
        sa.or_(api_keys.c.id == key_id, api_keys.c.prefix == key_id),
        api_keys.c.revoked_at.is_(None),
    )
    async with db.write() as tx:
        ids = list((await tx.conn.execute(sa.select(api_keys.c.id).where(match))).scalars())
        if len(ids) != 1:
            return False
        await tx.conn.execute(
            api_keys.update().where(api_keys.c.id == ids[0]).values(revoked_at=now())
        )
    return True
