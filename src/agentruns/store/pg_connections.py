"""PostgreSQL connections, kept checked out of SQLAlchemy's pool and handed out from a list.

A checkout from SQLAlchemy's async pool and the return after it cost a greenlet each, the
pool's bookkeeping and reset, and with the pre-ping a round trip: together twice the CPU of
the statement they were for (`docs/benchmarks.md`). Here a caller takes an idle connection
from a list instead. All of them rest in autocommit; a write transaction is BEGIN and
COMMIT sent on the driver's connection, so a connection never changes its settings.

Liveness without a round trip: a connection the server closed (a restart, an idle timeout)
shows as closed as soon as the event loop has read the close, and is then replaced. One
that breaks mid-request fails that request with `StoreError`, as any would.

Callers queue on a semaphore, not in the pool: a caller waiting in SQLAlchemy's pool waits
inside a greenlet, whose saved stack weighs kilobytes, and thousands of runs may want to
write at once. A caller gives up only when no connection came free for the whole pool
timeout: a long queue that moves is a busy database, not an unreachable one (thousands of
runs whose model answered at the same moment all write at once). And the blocks that keep
a process alive in the eyes of others (heartbeats, lease renewals) never queue behind runs'
writes: they have a connection of their own, beyond the pool's size, when all are taken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentruns.errors import StoreError

# SQLSTATE classes of failures that say nothing about the statement: the connection broke
# (08), the server is shutting down or starting (57), it is out of connections (53), or the
# transaction lost a lock race (40). The caller may try again; constraint errors still pass.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "57", "53", "40"})


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is about reaching the database rather than the statement."""
    if isinstance(exc, OSError | sa.exc.TimeoutError):  # refused, reset, pool exhausted
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        ):
            return True
        exc = exc.orig or exc
    # The driver's own errors, from the BEGIN and COMMIT sent on its connection.
    if type(exc).__module__.startswith("asyncpg") and type(exc).__name__ == "InterfaceError":
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


def reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {orig or exc}"


class _Pooled:
    __slots__ = ("conn", "driver")

    def __init__(self, conn: AsyncConnection, driver: Any) -> None:
        self.conn = conn
        self.driver = driver  # the asyncpg connection under `conn`

    def alive(self) -> bool:
        return not self.conn.invalidated and not self.driver.is_closed()


class _Slots:
    """A counting semaphore, first come first served, whose waiters all fail together once
    none of its slots has come free for `timeout_s`.

    Not `asyncio.Semaphore` with a timeout per waiter: a waiter timed out while the queue
    moved would have to queue again at the back, and thousands may wait at once, each
    with a timer. Here one timer checks the queue's progress.
    """

    def __init__(self, count: int, timeout_s: float) -> None:
        self.available = count
        self.timeout_s = timeout_s
        # Waiters in order; one cancelled stays in the deque, and `release` skips it.
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._waiting = 0  # those in the deque still waiting
        self._released = 0  # slots given back so far
        self._watch: asyncio.TimerHandle | None = None

    def locked(self) -> bool:
        return self.available == 0 or self._waiting > 0

    async def acquire(self) -> None:
        if not self.locked():
            self.available -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._waiting += 1
        if self._watch is None:
            self._watch_from(self._released)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():  # still waiting: `release` will skip it
                self._waiting -= 1
            elif waiter.exception() is None:  # granted a slot just as it was cancelled
                self.release()
            raise

    def release(self) -> None:
        self._released += 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._waiting -= 1
                waiter.set_result(None)  # the slot passes straight to it
                return
        self.available += 1

    def _watch_from(self, released: int) -> None:
        loop = asyncio.get_running_loop()
        self._watch = loop.call_later(self.timeout_s, self._check, released)

    def _check(self, released: int) -> None:
        self._watch = None
        waiting = [w for w in self._waiters if not w.done()]
        if not waiting:
            self._waiters.clear()
        elif self._released == released:  # not one came free all that time: stuck
            self._waiters.clear()
            self._waiting = 0
            for waiter in waiting:
                waiter.set_exception(
                    StoreError(
                        "cannot reach the database: no connection came free within "
                        f"{self.timeout_s:g} s"
                    )
                )
        else:
            self._watch_from(self._released)


class WriteTurn:
    """One caller's place in the queue for a connection, taken before its write is prepared.

    A write that queues inside `connection()` waits with its whole chain of frames (the
    statement's, the transaction's, the pool's), and in a burst thousands of runs' writes
    wait at once (`docs/benchmarks.md`). Waiting for the turn first, with nothing built,
    holds one small frame instead. The connection block that is given the turn takes its
    slot over; a turn never given to one is released when its `async with` ends.
    """

    __slots__ = ("_held", "_queue")

    def __init__(self, queue: _Slots | None) -> None:
        self._queue = queue
        self._held: _Slots | None = None

    async def __aenter__(self) -> WriteTurn:
        if self._queue is not None:
            await self._queue.acquire()
            self._held = self._queue
        return self

    async def __aexit__(self, *exc: object) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release()

    def take(self) -> _Slots | None:
        """The slot waited for, handed over to a connection block (at most once)."""
        held, self._held = self._held, None
        return held


class PostgresConnections:
    """`size` connections kept open, up to `overflow` more while the load needs them, and one
    more for priority blocks; a caller waits until none came free for `timeout_s`."""

    def __init__(self, engine: AsyncEngine, size: int, overflow: int, timeout_s: float) -> None:
        self._engine = engine
        self._idle: list[_Pooled] = []
        self._keep = size
        self._free = _Slots(size + overflow, timeout_s)
        self._reserved = _Slots(1, timeout_s)  # priority blocks', when the rest are taken
        self._closed = False

    @property
    def free(self) -> int:
        """How many more callers could have a connection at once."""
        return self._free.available

    async def open(self, count: int) -> None:
        """Open `count` connections now and keep them idle."""
        for _ in range(count):
            self._idle.append(await self._checkout())

    async def close(self) -> None:
        """Close the idle connections; those in use close as their blocks end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for pooled in idle:
            with contextlib.suppress(Exception):
                await pooled.conn.close()

    def turn(self) -> WriteTurn:
        """A place in the queue for a connection, to wait for before preparing a write
        (see `WriteTurn`); given to `connection()`, the block uses it."""
        return WriteTurn(self._free)

    @contextlib.asynccontextmanager
    async def connection(
        self, *, transaction: bool, priority: bool = False, turn: WriteTurn | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """A connection for the block, in a transaction (committed at its end) or not; with
        `priority`, without queueing behind the others (see the module's docstring); with
        a `turn` already waited for, without queueing again."""
        held = turn.take() if turn is not None else None
        if held is not None:
            slots = held
        else:
            slots = self._reserved if priority and self._free.locked() else self._free
        pooled = await self._acquire(slots, held=held is not None)
        idle = False  # whether the connection is known to be idle, with nothing open
        try:
            try:
                if transaction:
                    await pooled.driver.execute("BEGIN")
                yield pooled.conn
                if transaction:
                    await pooled.driver.execute("COMMIT")
                idle = True
            except Exception as exc:
                idle = await self._roll_back(pooled) if transaction else True
                # Lost connections, a server restart, lock timeouts: the caller may retry.
                # Errors about the statement itself (constraints, bad SQL) pass unchanged.
                if is_transient(exc):
                    raise StoreError(f"the database failed: {reason(exc)}") from exc
                raise
        finally:
            try:
                # Kept, unless it may be unusable (cancelled, the driver may still be
                # cancelling a statement), is one too many (an overflow connection), or the
                # list is closed.
                usable = idle and self._reset(pooled)
                if usable and not self._closed and len(self._idle) < self._keep:
                    self._idle.append(pooled)
                else:
                    await self._discard(pooled, at_once=not usable)
            finally:
                slots.release()  # even if cancelled again while discarding

    async def _acquire(self, slots: _Slots, *, held: bool = False) -> _Pooled:
        if not held:
            await slots.acquire()
        try:
            while self._idle:
                pooled = self._idle.pop()  # the most recently used: likeliest to be alive
                if pooled.alive():
                    return pooled
                await self._discard(pooled)
            return await self._checkout()
        except BaseException:
            slots.release()
            raise

    async def _checkout(self) -> _Pooled:
        try:
            conn = await self._engine.connect()
        except (OSError, sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
            raise StoreError(f"cannot reach the database: {reason(exc)}") from exc
        raw = await conn.get_raw_connection()  # what connect() made: no round trip
        return _Pooled(conn, raw.driver_connection)

    @staticmethod
    def _reset(pooled: _Pooled) -> bool:
        """End SQLAlchemy's record of the block's statements; whether to keep the connection.

        In autocommit, SQLAlchemy's implicit transaction is bookkeeping only: ending it
        sends nothing, so this needs no greenlet.
        """
        if not pooled.alive():
            return False
        if pooled.conn.in_transaction():
            pooled.conn.sync_connection.rollback()  # type: ignore[union-attr]
        return True

    @staticmethod
    async def _roll_back(pooled: _Pooled) -> bool:
        """Whether the block's transaction was rolled back on a connection still usable."""
        if not pooled.alive():
            return False
        try:
            await pooled.driver.execute("ROLLBACK")
        except Exception:
            return False
        return True

    @staticmethod
    async def _discard(pooled: _Pooled, *, at_once: bool = True) -> None:
        """Close the connection; SQLAlchemy's pool then opens a new one when one is wanted.

        `at_once`, for one whose state is unknown (say, a statement still being cancelled):
        without the goodbye a graceful close sends and waits for. Either way the close goes
        on even if the caller is cancelled again meanwhile.
        """
        if at_once:
            pooled.driver.terminate()

        async def forget() -> None:
            with contextlib.suppress(Exception):
                await pooled.conn.invalidate()
                await pooled.conn.close()

        await asyncio.shield(forget())
