"""PostgreSQL connections going away: the pool replaces them, a query on a dropped one fails
with `StoreError` (the API's 503), and the LISTEN connection reconnects by itself."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentruns.errors import StoreError
from agentruns.store.database import Database
from agentruns.store.notify import QUEUE_CHANNEL


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _terminate(url: str, where: str) -> int:
    """Terminate this database's other backends matching `where`; how many."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}"
            )
        )
    finally:
        await conn.close()


async def _wait(condition, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_listener_reconnects_after_its_connection_is_dropped(postgres_url: str) -> None:
    db = Database(postgres_url)
    await db.start()
    try:
        listener = db._listener
        assert listener is not None
        await asyncio.wait_for(listener.connected.wait(), 10)
        killed = await _terminate(postgres_url, "application_name = 'agentruns-listener'")
        assert killed == 1
        await _wait(lambda: listener.connections == 2 and listener.connected.is_set())
        # Notifications from other processes flow again.
        with db.notifier.watch_queue() as woken:
            woken.clear()
            conn = await asyncpg.connect(_dsn(postgres_url))
            try:
                await conn.execute(f"NOTIFY {QUEUE_CHANNEL}")
            finally:
                await conn.close()
            await asyncio.wait_for(woken.wait(), 5)
    finally:
        await db.close()


async def _backends(url: str) -> int:
    """This database's other backends."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()


async def test_dropped_pool_connections_are_replaced_unnoticed(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=3)
    try:
        await db.warm_up()
        for _ in range(3):
            for _ in range(2):  # reads and writes alike
                async with db.read() as conn:
                    assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
                async with db.write() as tx:
                    assert (await tx.conn.execute(sa.text("SELECT 2"))).scalar() == 2
            # The server closes them all (as a restart does); a moment later (not within
            # the same turn of the event loop) the next requests are served as if nothing
            # had happened.
            assert await _terminate(postgres_url, "true") >= 1
            deadline = time.monotonic() + 5
            while await _backends(postgres_url):
                assert time.monotonic() < deadline, "the backends did not exit"
    finally:
        await db.close()


async def test_a_query_on_a_dropped_connection_raises_store_error(postgres_url: str) -> None:
    db = Database(postgres_url)

    async def slow_query() -> None:
        async with db.read() as conn:
            await conn.execute(sa.text("SELECT pg_sleep(10)"))

    try:
        task = asyncio.create_task(slow_query())
        deadline = time.monotonic() + 5
        while not await _terminate(postgres_url, "query LIKE 'SELECT pg_sleep%'"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        with pytest.raises(StoreError):
            await asyncio.wait_for(task, 5)
        # The pool recovers by itself.
        async with db.read() as conn:
            assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
    finally:
        await db.close()


async def test_an_unreachable_server_fails_fast_with_store_error() -> None:
    db = Database("postgresql+asyncpg://postgres@127.0.0.1:9/agentruns", connect_timeout_s=2)
    started = time.monotonic()
    try:
        with pytest.raises(StoreError):
            async with db.read():
                pass
        assert not await db.ping()
    finally:
        await db.close()
    assert time.monotonic() - started < 5


async def test_warm_up_opens_the_whole_pool_before_any_request(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=4)
    try:
        before = await _backends(postgres_url)
        await db.warm_up()
        assert await _backends(postgres_url) == before + 4
        async with db.read() as conn:  # served from the pool: no new connection
            assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
        assert await _backends(postgres_url) == before + 4
    finally:
        await db.close()


class _Holders:
    """Blocks that each take a connection of `db` and keep it until `release` is set."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.release = asyncio.Event()
        self.holding = 0  # how many got their connection

    async def hold(self) -> None:
        async with self.db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
            self.holding += 1
            await self.release.wait()

    def start(self, count: int) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.hold()) for _ in range(count)]


async def test_callers_queue_for_a_free_connection_up_to_the_pool_timeout(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, pool_size=2, pool_timeout_s=0.3)
    blocks = _Holders(db)
    holders = blocks.start(2)
    try:
        await _wait(lambda: blocks.holding == 2)
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"no connection came free within 0\.3 s"):
            async with db.read():
                pass
        assert 0.25 < time.monotonic() - started < 2
        # A caller cancelled while it waits, and one that waits its turn: neither loses a
        # connection for good.
        cancelled, waiting = blocks.start(2)
        await asyncio.sleep(0.05)
        cancelled.cancel()
        blocks.release.set()
        await asyncio.gather(*holders, waiting)
        assert blocks.holding == 3
        for _ in range(3):
            async with db.read() as conn:
                assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
        assert db._connections is not None and db._connections.free == 2
    finally:
        blocks.release.set()
        await db.close()


async def test_a_queue_that_moves_is_waited_in_past_the_pool_timeout(postgres_url: str) -> None:
    """A burst (thousands of runs whose model answered at once) queues longer than the pool
    timeout; no caller fails while connections keep coming free."""
    db = Database(postgres_url, pool_size=1, pool_timeout_s=0.3)
    served: list[tuple[int, float]] = []
    started = time.monotonic()

    async def write_a_while(i: int) -> None:
        async with db.read() as conn:
            await conn.execute(sa.text("SELECT pg_sleep(0.1)"))
            served.append((i, time.monotonic() - started))

    try:
        await asyncio.gather(*(write_a_while(i) for i in range(8)))
        assert served[-1][1] > 0.6  # the last waited twice the timeout
        assert [i for i, _ in served] == list(range(8))  # in turn: none sent to the back
    finally:
        await db.close()


async def test_a_write_waits_for_its_turn_before_it_is_prepared(postgres_url: str) -> None:
    """A turn waited for in the queue is handed to the write that follows, which then does
    not queue again; a turn left unused, or given up while waiting, costs no connection."""
    db = Database(postgres_url, pool_size=1, pool_timeout_s=5)
    blocks = _Holders(db)
    (holder,) = blocks.start(1)
    served: list[str] = []

    async def write_in_turn(name: str) -> None:
        async with db.write_turn() as turn:
            served.append(f"{name}: turn")
            async with db.write(turn=turn) as tx:
                await tx.conn.execute(sa.text("SELECT 1"))
                served.append(f"{name}: wrote")

    async def read_in_queue() -> None:
        async with db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
            served.append("reader")

    async def turn_unused() -> None:
        async with db.write_turn():
            served.append("unused turn")

    try:
        await _wait(lambda: blocks.holding == 1)
        first = asyncio.create_task(write_in_turn("first"))
        await asyncio.sleep(0.02)
        given_up = asyncio.create_task(write_in_turn("given up"))
        await asyncio.sleep(0.02)
        unused = asyncio.create_task(turn_unused())
        await asyncio.sleep(0.02)
        reader = asyncio.create_task(read_in_queue())
        await asyncio.sleep(0.02)
        second = asyncio.create_task(write_in_turn("second"))
        await asyncio.sleep(0.05)
        assert served == []  # all queued behind the holder
        given_up.cancel()
        blocks.release.set()
        async with asyncio.timeout(5):  # a write that queued again for its own slot would hang
            await asyncio.gather(holder, first, unused, reader, second)
        assert given_up.cancelled()
        assert served == [
            "first: turn",
            "first: wrote",
            "unused turn",
            "reader",
            "second: turn",
            "second: wrote",
        ]
        assert db._connections is not None and db._connections.free == 1
    finally:
        blocks.release.set()
        await db.close()


async def test_heartbeats_do_not_queue_behind_the_others(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=2, pool_timeout_s=5)
    blocks = _Holders(db)
    holders = blocks.start(2)
    queued = blocks.start(3)  # run writes waiting their turn
    try:
        await _wait(lambda: blocks.holding == 2)
        async with asyncio.timeout(2):
            async with db.write(priority=True) as tx:
                assert (await tx.conn.execute(sa.text("SELECT 1"))).scalar() == 1
        # One connection more than the pool's, and only one: a second priority block waits
        # for it (or for any other).
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                async with db.write(priority=True), db.write(priority=True):
                    pass
        assert blocks.holding == 2
    finally:
        blocks.release.set()
        await asyncio.gather(*holders, *queued)
        assert blocks.holding == 5
        await db.close()


async def test_heartbeats_going_through_do_not_hide_a_stuck_pool(postgres_url: str) -> None:
    """The connection kept for heartbeats comes free again and again; the others' waiters
    still fail once none of theirs has come free for the pool timeout."""
    db = Database(postgres_url, pool_size=1, pool_timeout_s=0.3)
    blocks = _Holders(db)
    holders = blocks.start(1)
    beating = True

    async def heartbeats() -> None:
        while beating:
            async with db.write(priority=True) as tx:
                await tx.conn.execute(sa.text("SELECT 1"))
            await asyncio.sleep(0.05)

    beats = asyncio.create_task(heartbeats())
    try:
        await _wait(lambda: blocks.holding == 1)
        started = time.monotonic()
        with pytest.raises(StoreError, match="no connection came free"):
            async with asyncio.timeout(5):
                async with db.read():
                    pass
        assert time.monotonic() - started < 1.5
    finally:
        beating = False
        blocks.release.set()
        await asyncio.gather(beats, *holders)
        await db.close()


async def _backend_pid(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_failed_write_is_rolled_back_and_its_connection_kept(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=1)
    try:
        async with db.write() as tx:
            await tx.conn.execute(sa.text("CREATE TABLE notes (body text PRIMARY KEY)"))
        pid = await _backend_pid(db)
        with pytest.raises(RuntimeError):
            async with db.write() as tx:
                await tx.conn.execute(sa.text("INSERT INTO notes VALUES ('lost')"))
                raise RuntimeError("the caller gives up")
        with pytest.raises(sa.exc.IntegrityError):
            async with db.write() as tx:
                await tx.conn.execute(sa.text("INSERT INTO notes VALUES ('twice'), ('twice')"))
        async with db.write() as tx:
            await tx.conn.execute(sa.text("INSERT INTO notes VALUES ('kept')"))
        async with db.read() as conn:
            bodies = (await conn.execute(sa.text("SELECT body FROM notes"))).scalars().all()
        assert bodies == ["kept"]
        # The same connection all along: nothing was left open on it.
        assert await _backend_pid(db) == pid
    finally:
        await db.close()


async def test_a_block_cancelled_mid_statement_leaves_nothing_behind(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=1)
    try:
        async with db.write() as tx:
            await tx.conn.execute(sa.text("CREATE TABLE notes (body text)"))
        pid = await _backend_pid(db)

        async def slow_write() -> None:
            async with db.write() as tx:
                await tx.conn.execute(sa.text("INSERT INTO notes VALUES ('cancelled')"))
                await tx.conn.execute(sa.text("SELECT pg_sleep(10)"))

        task = asyncio.create_task(slow_write())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The next caller gets a working connection (a new one: the cancelled statement's
        # was closed), and the cancelled transaction wrote nothing.
        async with db.read() as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM notes"))).scalar() == 0
        assert await _backend_pid(db) != pid
    finally:
        await db.close()


async def test_overflow_connections_close_once_the_load_is_gone(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=1, max_overflow=2)
    try:
        before = await _backends(postgres_url)
        blocks = _Holders(db)
        tasks = blocks.start(3)
        await _wait(lambda: blocks.holding == 3, 5)
        assert await _backends(postgres_url) == before + 3
        blocks.release.set()
        await asyncio.gather(*tasks)
        # The pool's one connection stays open for the next caller; the two others close.
        deadline = time.monotonic() + 5
        while await _backends(postgres_url) != before + 1:
            assert time.monotonic() < deadline, "overflow connections stayed open"
    finally:
        await db.close()


async def test_a_block_cancelled_again_while_its_connection_closes_keeps_its_slot(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's task may be cancelled twice (say, by its user and by the heartbeat that then
    finds its lease gone): the second cancellation must not cost the pool a connection."""
    invalidate = AsyncConnection.invalidate

    async def slow_invalidate(
        self: AsyncConnection, exception: BaseException | None = None
    ) -> None:
        await asyncio.sleep(0.05)  # as a graceful close waiting for the server's goodbye
        await invalidate(self, exception)

    monkeypatch.setattr(AsyncConnection, "invalidate", slow_invalidate)
    db = Database(postgres_url, pool_size=2)
    try:
        for _ in range(3):

            async def slow_read() -> None:
                async with db.read() as conn:
                    await conn.execute(sa.text("SELECT pg_sleep(10)"))

            task = asyncio.create_task(slow_read())
            await asyncio.sleep(0.2)
            while not task.done():  # again and again, while its connection is being closed
                task.cancel()
                await asyncio.sleep(0.0005)
            with pytest.raises(asyncio.CancelledError):
                await task
        assert db._connections is not None and db._connections.free == 2
        async with db.read() as a, db.read() as b:  # both slots work
            assert (await a.execute(sa.text("SELECT 1"))).scalar() == 1
            assert (await b.execute(sa.text("SELECT 2"))).scalar() == 2
    finally:
        await db.close()


async def test_connections_returned_after_close_are_closed(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=2)
    blocks = _Holders(db)
    before = await _backends(postgres_url)
    [task] = blocks.start(1)
    await _wait(lambda: blocks.holding == 1, 5)
    await db.close()  # while a block still holds a connection
    blocks.release.set()
    await task
    deadline = time.monotonic() + 5
    while await _backends(postgres_url) > before:
        assert time.monotonic() < deadline, "a connection outlived the database's close"
