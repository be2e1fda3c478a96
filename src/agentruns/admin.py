"""Local key management for the CLI: the one thing done against the database directly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agentruns.config import Settings
from agentruns.store import projects
from agentruns.store.clock import iso
from agentruns.store.database import Database
from agentruns.store.migrate import upgrade

T = TypeVar("T")


def _with_db(settings: Settings, action: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        await upgrade(settings.database_url)
        db = Database(settings.database_url)
        try:
            return await action(db)
        finally:
            await db.close()

    return asyncio.run(main())


def create_api_key(settings: Settings, project: str | None = None) -> str:
    """A new key for `project` (created if new; default project if None)."""
    key, _project_id = _with_db(settings, lambda db: projects.create_api_key(db, project))
    return key


def list_api_keys(settings: Settings) -> list[dict[str, Any]]:
    rows = _with_db(settings, projects.list_api_keys)
    return [
        {**row, "created_at": iso(row["created_at"]), "revoked_at": iso(row["revoked_at"])}
        for row in rows
    ]


def revoke_api_key(settings: Settings, key_id: str) -> bool:
    return _with_db(settings, lambda db: projects.revoke_api_key(db, key_id))
