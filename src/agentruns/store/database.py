"""The database handle: engines, write and read transactions, post-commit wake-ups.

SQLite writes take the write lock up front (`BEGIN IMMEDIATE`) so that a
transaction never fails half-way upgrading a read lock, and within a process
they queue on an asyncio lock instead of spinning on `busy_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agentruns.errors import StoreError
from agentruns.store.notify import (
    EVENTS_CHANNEL,
    QUEUE_CHANNEL,
    Notifier,
    PostgresListener,
    RunEvent,
)
from agentruns.store.sqlite import SQLiteConnections

if TYPE_CHECKING:
    from agentruns.config import Settings

# SQLSTATE classes of failures that say nothing about the statement: the connection broke
# (08), the server is shutting down or starting (57), it is out of connections (53), or the
# transaction lost a lock race (40). The caller may try again; constraint errors still pass.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "57", "53", "40"})


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is about reaching the database rather than the statement."""
    if isinstance(exc, OSError | sa.exc.TimeoutError):  # refused, reset, pool exhausted
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(
        exc, sa.exc.OperationalError | sa.exc.InterfaceError
    ):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (`postgres://`, `sqlite:///x.db`) and pick async drivers."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite:///") or url == "sqlite://":
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


# PostgreSQL cannot store U+0000 in JSONB or TEXT; it is replaced everywhere, on both
# databases, so that what a run streamed and what it stored stay identical.
_ESCAPED_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def dumps_json(value: Any) -> str:
    encoded = orjson.dumps(value)
    if b"\\u0000" in encoded:
        encoded = _ESCAPED_NUL.sub(rb"\1\\ufffd", encoded)
    return encoded.decode()


def without_nul(text: str) -> str:
    return text.replace("\x00", "\ufffd")


_NOTIFY = sa.select(
    sa.func.pg_notify(
        sa.bindparam("channel", type_=sa.Text), sa.bindparam("payload", type_=sa.Text)
    )
)


def notify_column(channel: str, payload: sa.ColumnElement[str]) -> sa.ColumnElement[Any]:
    """`pg_notify` as a column of a statement's RETURNING clause (PostgreSQL).

    The notification then rides with a statement the transaction sends anyway instead of
    costing a round trip of its own; like any NOTIFY it is delivered at commit, or never.
    """
    return sa.func.pg_notify(sa.literal(channel, sa.Text), payload).label(f"notified_{channel}")


@dataclass
class Tx:
    """A write transaction, and what to announce once it has committed."""

    conn: AsyncConnection
    is_postgres: bool
    run_events: list[tuple[str, str, list[RunEvent] | None]] = field(default_factory=list)
    queue_changed: bool = False

    async def announce_event(
        self,
        run_id: str,
        event_type: str,
        events: list[RunEvent] | None = None,
        *,
        notified: bool = False,
    ) -> None:
        """Wake this process's readers after commit, and other processes' (PostgreSQL)
        unless a statement of the transaction already notified (`notify_column`)."""
        self.run_events.append((run_id, event_type, events))
        if self.is_postgres and not notified:
            await self.conn.execute(
                _NOTIFY, {"channel": EVENTS_CHANNEL, "payload": f"{run_id}:{event_type}"}
            )

    async def announce_queued(self, *, notified: bool = False) -> None:
        if not self.queue_changed and self.is_postgres and not notified:
            await self.conn.execute(_NOTIFY, {"channel": QUEUE_CHANNEL, "payload": ""})
        self.queue_changed = True


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {orig or exc}"


class Database:
    """One per process: owns the connections and the in-process notifier.

    On PostgreSQL, `pool_size` connections are kept open and up to `max_overflow` more are
    opened under load; a caller waits at most `pool_timeout_s` for one, and opening one
    gives up after `connect_timeout_s`. Both then raise `StoreError` (the API answers 503).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        max_overflow: int = 0,
        pool_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.is_postgres = self.url.startswith("postgresql")
        self.notifier = Notifier()
        self.connect_timeout_s = connect_timeout_s
        self.pool_size = pool_size
        self.pool_timeout_s = pool_timeout_s
        # PostgreSQL: callers queue for a pooled connection here, not in the pool. A caller
        # waiting in SQLAlchemy's pool waits inside a greenlet, whose saved stack weighs
        # kilobytes; when thousands of runs want to write at once, that is most of their
        # memory. Waiting on a semaphore costs a future.
        self._free_connections = asyncio.Semaphore(pool_size + max_overflow)
        self._listener: PostgresListener | None = None
        self._sqlite: SQLiteConnections | None = None
        self.engine: AsyncEngine | None = None
        if self.is_sqlite:
            self._sqlite = SQLiteConnections(
                self.url, json_serializer=dumps_json, json_deserializer=orjson.loads
            )
            # Within a process writers queue here, not on the file lock.
            self._write_lock: asyncio.Lock | None = asyncio.Lock()
        else:
            self._write_lock = None
            self.engine = create_async_engine(
                self.url,
                json_serializer=dumps_json,
                json_deserializer=orjson.loads,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout_s,
                # A restarted server leaves dead connections in the pool: test each one as it
                # is checked out and replace it, instead of failing the request that drew it.
                # (Testing only connections idle for a while saved a tenth of the database
                # time, but one the server closed a moment ago then failed its request.)
                pool_pre_ping=True,
                # Pooled connections rest in autocommit, where the ping is one round trip
                # (outside it, SQLAlchemy's asyncpg ping is BEGIN, the ping, ROLLBACK).
                # Reads stay there: they need no BEGIN and COMMIT, since at READ COMMITTED
                # each statement reads its own snapshot, inside a transaction or not.
                isolation_level="AUTOCOMMIT",
                connect_args={"timeout": connect_timeout_s},
            )
            # Writes are transactions, at PostgreSQL's default level.
            self._write_engine = self.engine.execution_options(isolation_level="READ COMMITTED")

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database and pool the settings describe."""
        return cls(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout_s=settings.db_pool_timeout_s,
            connect_timeout_s=settings.db_connect_timeout_s,
        )

    async def start(self) -> None:
        """Start relaying other processes' notifications (PostgreSQL only)."""
        if self.is_postgres and self._listener is None:
            dsn = self.url.replace("postgresql+asyncpg://", "postgresql://", 1)
            self._listener = PostgresListener(
                dsn, self.notifier, connect_timeout_s=self.connect_timeout_s
            )
            self._listener.start()

    async def warm_up(self) -> None:
        """Open the pool's connections now (PostgreSQL), for a long-running process.

        A burst of requests right after start would otherwise wait, each, for a
        connection to be made and set up (several round trips apiece).
        """
        if self.engine is None:
            return
        opened: list[AsyncConnection] = []
        try:
            for _ in range(self.pool_size):
                opened.append(await self.engine.connect())
        except (OSError, sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
            raise StoreError(f"cannot reach the database: {_reason(exc)}") from exc
        finally:
            for conn in opened:
                await conn.close()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._sqlite is not None:
            self._sqlite.close()
        if self.engine is not None:
            await self.engine.dispose()

    def _transaction(self, *, write: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        if self._sqlite is not None:
            assert not write, "SQLite writes go through write()"
            return self._sqlite.read()
        return self._postgres_transaction(write=write)

    @contextlib.asynccontextmanager
    async def _postgres_transaction(self, *, write: bool) -> AsyncIterator[Any]:
        assert self.engine is not None
        free = self._free_connections
        if free.locked():  # all in use: wait, at most the pool timeout
            try:
                async with asyncio.timeout(self.pool_timeout_s):
                    await free.acquire()
            except TimeoutError:
                raise StoreError(
                    "cannot reach the database: "
                    f"no connection free within {self.pool_timeout_s:g} s"
                ) from None
        else:
            await free.acquire()  # at once
        try:
            pg_conn = await (self._write_engine if write else self.engine).connect()
        except BaseException as exc:
            free.release()
            if isinstance(exc, OSError | sa.exc.DBAPIError | sa.exc.TimeoutError):
                raise StoreError(f"cannot reach the database: {_reason(exc)}") from exc
            raise
        try:
            if write:
                async with pg_conn.begin():
                    yield pg_conn
            else:
                yield pg_conn
        except (OSError, sa.exc.DBAPIError) as exc:
            # Lost connections, a server restart, lock timeouts: the caller may retry.
            # Errors about the statement itself (constraints, bad SQL) pass unchanged.
            if not is_transient(exc):
                raise
            raise StoreError(f"the database failed: {_reason(exc)}") from exc
        finally:
            with contextlib.suppress(OSError, sa.exc.DBAPIError):
                # Returning a broken connection to the pool may fail too; the pool drops it.
                await pg_conn.close()
            free.release()

    @contextlib.asynccontextmanager
    async def write(self, *, one_statement: bool = False) -> AsyncIterator[Tx]:
        """A write transaction; its announcements wake local waiters after commit.

        On SQLite the writes of one turn of the event loop commit together (see
        `store/sqlite.py`); within a process, writers queue on a lock, not on the file's.
        With `one_statement` the block promises to send a single statement, which is
        atomic on its own: on PostgreSQL it then runs without BEGIN and COMMIT, two round
        trips fewer.
        """
        if self._sqlite is not None:
            assert self._write_lock is not None
            async with self._write_lock:
                group = await self._sqlite.begin_write()
                # LoopConnection offers the one method of AsyncConnection that writes use.
                tx = Tx(cast(AsyncConnection, group.loop_conn), is_postgres=False)
                try:
                    yield tx
                except Exception as exc:
                    failed: Exception | None = exc
                    settled = self._sqlite.end_write(group, keep=False)
                except BaseException:
                    self._sqlite.end_write(
                        group, keep=False
                    ).cancel()  # cancelled: it waits for nothing
                    raise
                else:
                    failed = None
                    settled = self._sqlite.end_write(group, keep=True)
            if failed is not None:
                # A writer that failed (say, on a row a writer of its group inserted) also
                # waits for the group's commit: what it reads next then shows that row.
                with contextlib.suppress(Exception):
                    await settled
                raise failed
            await settled
        else:
            async with self._transaction(write=not one_statement) as conn:
                tx = Tx(conn, self.is_postgres)
                yield tx
        for run_id, event_type, events in tx.run_events:
            self.notifier.run_changed(run_id, event_type, events)
        if tx.queue_changed:
            self.notifier.queue_changed()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """Reads only: one snapshot on SQLite, one per statement on PostgreSQL."""
        async with self._transaction(write=False) as conn:
            yield conn

    async def ping(self) -> bool:
        try:
            async with self.read() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True
