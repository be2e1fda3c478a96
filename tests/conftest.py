"""Shared fixtures: a fresh database on SQLite and on the local PostgreSQL, fake providers."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentruns.store.database import Database
from agentruns.store.migrate import upgrade

PG_ADMIN_DSN = os.environ.get(
    "AGENTRUNS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("AGENTRUNS_REQUIRE_POSTGRES") == "1"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _postgres_reason() -> str | None:
    """None if the local PostgreSQL answers, else why not."""
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL at {PG_ADMIN_DSN} is not reachable ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database for this test session (dropped at the end)."""
    reason = _postgres_reason()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"AGENTRUNS_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    name = f"agentruns_tmpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    asyncio.run(upgrade(_pg_url(name)))
    yield name
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _pg_url(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = f"agentruns_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    yield _pg_url(name)
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'agentruns.db'}"
    asyncio.run(upgrade(url))
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database URL, once per backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await database.start()
    yield database
    await database.close()
