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

from agentruns.store.notify import (
    EVENTS_CHANNEL,
    QUEUE_CHANNEL,
    Notifier,
    PostgresListener,
    RunEvent,
)
from agentruns.store.pg_connections import PostgresConnections, WriteTurn
from agentruns.store.sqlite import SQLiteConnections

if TYPE_CHECKING:
    from agentruns.config import Settings


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


_NO_TURN = WriteTurn(None)


class Database:
    """One per process: owns the connections and the in-process notifier.

    On PostgreSQL, `pool_size` connections are kept open and up to `max_overflow` more are
    opened under load, plus one for heartbeats when all are taken; a caller waits until
    none has come free for `pool_timeout_s`, and opening one gives up after
    `connect_timeout_s`. Both then raise `StoreError` (the API answers 503).
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
        self._listener: PostgresListener | None = None
        self._sqlite: SQLiteConnections | None = None
        self.engine: AsyncEngine | None = None
        self._connections: PostgresConnections | None = None
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
                # One more than ours hands out: the connection kept for heartbeats.
                pool_size=pool_size + 1,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout_s,
                # A restarted server leaves dead connections in the pool: SQLAlchemy's pool
                # tests each one it hands out (`PostgresConnections` keeps them once out).
                pool_pre_ping=True,
                # Connections rest in autocommit, and reads stay there: at READ COMMITTED
                # each statement reads its own snapshot, inside a transaction or not.
                isolation_level="AUTOCOMMIT",
                connect_args={"timeout": connect_timeout_s},
            )
            self._connections = PostgresConnections(
                self.engine, pool_size, max_overflow, pool_timeout_s
            )

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
        if self._connections is not None:
            await self._connections.open(self.pool_size)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._sqlite is not None:
            self._sqlite.close()
        if self._connections is not None:
            await self._connections.close()
        if self.engine is not None:
            await self.engine.dispose()

    def _transaction(
        self, *, write: bool, priority: bool = False, turn: WriteTurn | None = None
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        if self._sqlite is not None:
            assert not write, "SQLite writes go through write()"
            return self._sqlite.read()
        assert self._connections is not None
        return self._connections.connection(transaction=write, priority=priority, turn=turn)

    def write_turn(self) -> WriteTurn:
        """Wait in `async with` for a connection to be free before preparing a write, then
        pass the turn to `write()`: a write queued that way holds only the turn meanwhile.
        On SQLite, where writes do not queue for connections, the turn waits for nothing.
        """
        return self._connections.turn() if self._connections is not None else _NO_TURN

    @contextlib.asynccontextmanager
    async def write(
        self,
        *,
        one_statement: bool = False,
        priority: bool = False,
        turn: WriteTurn | None = None,
    ) -> AsyncIterator[Tx]:
        """A write transaction; its announcements wake local waiters after commit.

        On SQLite the writes of one turn of the event loop commit together (see
        `store/sqlite.py`); within a process, writers queue on a lock, not on the file's.
        With `one_statement` the block promises to send a single statement, which is
        atomic on its own: on PostgreSQL it then runs without BEGIN and COMMIT, two round
        trips fewer. `priority` is for what keeps the process alive in others' eyes (a
        heartbeat, lease renewals): on PostgreSQL it does not queue behind other writes.
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
            async with self._transaction(
                write=not one_statement, priority=priority, turn=turn
            ) as conn:
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
