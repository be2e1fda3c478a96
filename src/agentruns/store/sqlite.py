"""SQLite driven from the event loop thread, without a thread hop per statement.

SQLite answers a statement in microseconds, far less than handing it to a
driver thread and waking the loop again (what aiosqlite does, several times per
statement). So statements run synchronously on the loop, behind an awaitable
facade. Nothing inside a transaction suspends, so coroutines never interleave
inside one; a transaction that could not take the write lock at once (another
process holds it) waits by sleeping on the loop, never by blocking it.

Writes commit in groups: the writers that run in one turn of the event loop share one
transaction, each in a savepoint of its own (so one that fails undoes only its own
statements), committed once at the end of the turn; each writer waits for that commit
before it goes on. Under load a commit, not a statement, is what a write costs, and
thousands of runs' steps can be ready at once; a lone writer waits one turn of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa

from agentruns.errors import StoreError

log = logging.getLogger(__name__)

LOCK_WAIT_S = 15.0
# No checkpoint inside a commit: the `Checkpointer` thread does them (see there).
PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=NORMAL",
    "busy_timeout=0",
    "foreign_keys=ON",
    "wal_autocheckpoint=0",
)
# A checkpoint is asked for after this many write transactions, and made at least this often.
CHECKPOINT_EVERY_WRITES = 200
CHECKPOINT_EVERY_S = 1.0
# Past this many frames (4 KB each) the log is emptied: see `Checkpointer`.
WAL_TRUNCATE_FRAMES = 16_384
# How long emptying the log waits for a moment when no transaction uses it.
WAL_TRUNCATE_WAIT_MS = 2_000


class LoopConnection:
    """The awaitable `execute` of an AsyncConnection, over a synchronous connection."""

    __slots__ = ("sync",)

    def __init__(self, sync: sa.Connection) -> None:
        self.sync = sync

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        if parameters is None:
            return self.sync.execute(statement)
        return self.sync.execute(statement, parameters)


class WriteGroup:
    """One write transaction, shared by the writers of one turn of the event loop."""

    __slots__ = ("conn", "due", "failed", "loop_conn", "open", "raw", "waiters")

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.loop_conn = LoopConnection(conn)
        self.raw: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
        self.waiters: list[asyncio.Future[None]] = []
        self.open = False  # a writer is inside its savepoint
        self.due = False  # the turn ended while a writer was inside
        self.failed: StoreError | None = None


def _failed(exc: BaseException | None) -> StoreError:
    return StoreError(f"the database failed: {exc}")


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
        path = self.engine.url.database
        in_memory = not path or path == ":memory:" or path.startswith("file::memory:")
        self._checkpointer = (
            Checkpointer(path, truncate_frames=WAL_TRUNCATE_FRAMES)
            if path and not in_memory
            else None
        )
        self._writes = 0
        self._group: WriteGroup | None = None

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
    async def read(self) -> AsyncIterator[LoopConnection]:
        """A read transaction: one snapshot for all its statements."""
        conn = self._acquire()
        try:
            await self._begin(conn, "BEGIN")
            yield LoopConnection(conn)
        except sa.exc.OperationalError as exc:
            raise StoreError(f"the database failed: {exc.orig}") from exc
        finally:
            self._release(conn)

    async def begin_write(self) -> WriteGroup:
        """Join this turn's write transaction, or begin it; inside a savepoint of its own.

        The caller holds the process's write lock until `end_write`, so
        savepoints never nest.
        """
        group = self._group
        if group is None:
            if self._checkpointer is not None and self._checkpointer.quiet_wanted:
                await self._checkpointer.quiet()
            conn = self._acquire()
            try:
                await self._begin(conn, "BEGIN IMMEDIATE")
            except BaseException:
                self._release(conn)
                raise
            group = self._group = WriteGroup(conn)
            asyncio.get_running_loop().call_soon(self._end_of_turn, group)
        group.raw.execute("SAVEPOINT writer")
        group.open = True
        return group

    def end_write(self, group: WriteGroup, *, keep: bool) -> asyncio.Future[None]:
        """Keep the writer's statements, or undo only them (it raised); done when the group
        has committed (or failed)."""
        group.open = False
        settled = asyncio.get_running_loop().create_future()
        group.waiters.append(settled)
        try:
            if keep:
                group.raw.execute("RELEASE writer")
            elif group.raw.in_transaction:
                group.raw.execute("ROLLBACK TO writer")
                group.raw.execute("RELEASE writer")
            else:
                # Some errors (disk full, I/O) end the whole transaction: the group is lost.
                group.failed = StoreError("the database failed: the transaction was rolled back")
        except sqlite3.Error as exc:
            group.failed = _failed(exc)
        if group.due or group.failed is not None:
            self._commit(group)
        return settled

    def _end_of_turn(self, group: WriteGroup) -> None:
        if group.open:
            group.due = True  # a writer suspended inside its block: it commits on leaving
        elif self._group is group:  # not committed yet
            self._commit(group)

    def _commit(self, group: WriteGroup) -> None:
        self._group = None  # a group is current until it commits
        failure = group.failed
        if failure is None:
            try:
                if not group.raw.in_transaction:
                    raise StoreError("the database failed: the transaction was rolled back")
                group.conn.commit()
            except StoreError as exc:
                failure = exc
            except sa.exc.DBAPIError as exc:
                failure = _failed(exc.orig)
        if failure is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                group.conn.rollback()
        elif self._checkpointer is not None:
            self._writes += 1
            if self._writes >= CHECKPOINT_EVERY_WRITES:
                self._writes = 0
                self._checkpointer.request()
        self._release(group.conn)
        for waiter in group.waiters:
            if waiter.done():
                continue  # its writer was cancelled meanwhile; the write stands
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(failure)
        group.waiters.clear()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        self.engine.dispose()
        if self._checkpointer is not None:
            self._checkpointer.stop()


class Checkpointer:
    """Copies the write-ahead log into the database file from a thread of its own.

    SQLite otherwise checkpoints inside the commit that grows the log past 1,000 pages:
    a few milliseconds of copying and fsync on the event loop, which every run and
    request of the process then waits out. Here the copy runs beside the loop (sqlite3
    releases the GIL while it works). PASSIVE never waits for a lock, so it never holds
    up a writer; whatever it could not copy it copies next time.

    But copying is not emptying: the log starts over from its beginning only when a
    writer finds every frame copied, which under steady writes never happens (new frames
    arrive while the copy runs), so the log would grow without end (5.5 GB after 45,000
    runs). Past `truncate_frames`, the checkpointer asks this process's writers to hold off
    (`quiet_wanted`; a writer otherwise takes the lock again at once, and the checkpointer
    would never get it), copies the rest and truncates the log: writers wait a few
    milliseconds then.
    """

    def __init__(self, path: str, *, truncate_frames: int = WAL_TRUNCATE_FRAMES) -> None:
        self.path = path
        self.truncate_frames = truncate_frames
        self.truncations = 0
        self.quiet_wanted = False  # set by the thread, read by the event loop
        self._due = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._due.set()

    async def quiet(self) -> None:
        """Wait (on the loop) while the log is being emptied, at most its lock wait."""
        deadline = asyncio.get_running_loop().time() + WAL_TRUNCATE_WAIT_MS / 1000
        # Polled: the flag is the thread's, and this happens once per many megabytes of log.
        while self.quiet_wanted and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    def stop(self) -> None:
        self._stopping = True
        self._due.set()
        self._thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stopping:
                self._due.wait(CHECKPOINT_EVERY_S)
                self._due.clear()
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, isolation_level=None)
                        conn.execute(f"PRAGMA busy_timeout={WAL_TRUNCATE_WAIT_MS}")
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames >= self.truncate_frames:
                        self.quiet_wanted = True
                        try:
                            checkpoint = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                            busy, _, _ = checkpoint.fetchone()
                        finally:
                            self.quiet_wanted = False
                        self.truncations += not busy  # busy: the log stays, tried next time
                except sqlite3.Error as exc:
                    log.warning("SQLite checkpoint failed (retried later): %s", exc)
        finally:
            # The last connection to close copies what is left and removes the log.
            if conn is not None:
                conn.close()


def _configure(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun explicitly (BEGIN IMMEDIATE for writes), never implicitly.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
