"""SQLite driven from the event loop thread, without a thread hop per statement.

SQLite answers a statement in microseconds, far less than handing it to a
driver thread and waking the loop again (what aiosqlite does, several times per
statement). So statements run synchronously on the loop, behind an awaitable
facade. Nothing inside a transaction suspends, so coroutines never interleave
inside one; a transaction that could not take the write lock at once (another
process holds it) waits by sleeping on the loop, never by blocking it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa

from agentruns.errors import StoreError

LOCK_WAIT_S = 15.0
PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=0", "foreign_keys=ON")


class LoopConnection:
    """The awaitable `execute` of an AsyncConnection, over a synchronous connection."""

    __slots__ = ("sync",)

    def __init__(self, sync: sa.Connection) -> None:
        self.sync = sync

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        if parameters is None:
            return self.sync.execute(statement)
        return self.sync.execute(statement, parameters)


def _is_busy(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


class SQLiteConnections:
    """A few reusable connections to one SQLite file (normally only one is ever in use)."""

    def __init__(self, url: str, *, json_serializer: Callable[[Any], str], json_deserializer: Any):
        sync_url = url.replace("sqlite+aiosqlite://", "sqlite://", 1)
        self.engine = sa.create_engine(
            sync_url,
            json_serializer=json_serializer,
            json_deserializer=json_deserializer,
            poolclass=sa.pool.NullPool,
        )
        sa.event.listen(self.engine, "connect", _configure)
        self._idle: list[sa.Connection] = []

    def _acquire(self) -> sa.Connection:
        if self._idle:
            return self._idle.pop()
        try:
            return self.engine.connect()
        except sa.exc.DBAPIError as exc:
            raise StoreError(f"cannot open the database: {exc.orig}") from exc

    def _release(self, conn: sa.Connection) -> None:
        if conn.in_transaction():
            conn.rollback()
        self._idle.append(conn)

    async def _begin(self, conn: sa.Connection, statement: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT_S
        delay = 0.0005
        while True:
            try:
                conn.exec_driver_sql(statement)
                return
            except sa.exc.OperationalError as exc:
                if not _is_busy(exc) or loop.time() > deadline:
                    raise StoreError(f"the database is busy: {exc.orig}") from exc
                conn.rollback()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[LoopConnection]:
        conn = self._acquire()
        try:
            await self._begin(conn, "BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield LoopConnection(conn)
            except BaseException:
                conn.rollback()
                raise
            try:
                conn.commit()
            except sa.exc.OperationalError as exc:
                conn.rollback()
                raise StoreError(f"the database failed: {exc.orig}") from exc
        except sa.exc.OperationalError as exc:
            raise StoreError(f"the database failed: {exc.orig}") from exc
        finally:
            self._release(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        self.engine.dispose()


def _configure(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun explicitly (BEGIN IMMEDIATE for writes), never implicitly.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
