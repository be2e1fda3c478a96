"""SQLite writes of one turn of the event loop commit together, each writer on its own terms."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from agentruns.store.database import Database

INSERT = sa.text("INSERT INTO notes (body) VALUES (:body)")


async def notes(db: Database) -> list[str]:
    async with db.read() as conn:
        return [row[0] for row in await conn.execute(sa.text("SELECT body FROM notes ORDER BY id"))]


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(f"sqlite:///{tmp_path / 'group.db'}")
    async with database.write() as tx:
        await tx.conn.execute(
            sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT UNIQUE)")
        )
    yield database
    await database.close()


async def test_writers_ready_together_share_one_commit_and_a_failing_one_undoes_only_its_own(
    db: Database,
) -> None:
    assert db._sqlite is not None
    commits: list[int] = []
    sa.event.listen(db._sqlite.engine, "commit", lambda _conn: commits.append(1))

    async def writer(i: int) -> str:
        async with db.write() as tx:
            await tx.conn.execute(INSERT, {"body": f"first {i}"})
            if i % 3 == 0:
                await tx.conn.execute(INSERT, {"body": f"first {i}"})  # breaks UNIQUE
        # Once write() is done the note is committed: a reader sees it.
        assert f"first {i}" in await notes(db)
        return "ok"

    outcomes = await asyncio.gather(*(writer(i) for i in range(30)), return_exceptions=True)
    failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, sa.exc.IntegrityError)]
    assert failed == list(range(0, 30, 3))
    assert all(outcome == "ok" for i, outcome in enumerate(outcomes) if i not in failed)
    assert await notes(db) == [f"first {i}" for i in range(30) if i % 3]
    assert len(commits) <= 2  # 30 writers, not 30 commits


async def test_a_writer_that_waits_inside_its_block_holds_the_commit_until_it_leaves(
    db: Database,
) -> None:
    inside = asyncio.Event()
    seen_meanwhile: list[list[str]] = []

    async def slow() -> None:
        async with db.write() as tx:
            await tx.conn.execute(INSERT, {"body": "slow 1"})
            inside.set()
            await asyncio.sleep(0.05)  # the turn of the loop ends while it is inside
            await tx.conn.execute(INSERT, {"body": "slow 2"})

    async def fast() -> None:
        await inside.wait()
        async with db.write() as tx:
            await tx.conn.execute(INSERT, {"body": "fast"})

    async def reader() -> None:
        await inside.wait()
        seen_meanwhile.append(await notes(db))

    await asyncio.gather(slow(), fast(), reader())
    assert seen_meanwhile == [[]]  # nothing was committed half-way
    assert await notes(db) == ["slow 1", "slow 2", "fast"]


async def test_a_cancelled_writer_leaves_nothing_and_the_others_commit(db: Database) -> None:
    inside = asyncio.Event()

    async def cancelled() -> None:
        async with db.write() as tx:
            await tx.conn.execute(INSERT, {"body": "never"})
            inside.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(cancelled())
    await inside.wait()
    task.cancel()
    async with db.write() as tx:
        await tx.conn.execute(INSERT, {"body": "after"})
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await notes(db) == ["after"]
