"""SQLite's write-ahead log is copied into the database file by a thread, never by a commit."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from agentruns.store import sqlite as sqlite_store
from agentruns.store.database import Database
from agentruns.store.sqlite import CHECKPOINT_EVERY_WRITES

ROWS = 3 * CHECKPOINT_EVERY_WRITES


def rows_in_the_database_file(path: Path) -> int:
    """Rows a reader of the main file alone sees: only what checkpoints copied there."""
    with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM notes").fetchone()[0]


def copied_so_far(path: Path) -> int:
    """`rows_in_the_database_file` while the checkpointer may be writing the file: a read
    that takes no lock (`immutable`) can catch a copy half-done, which counts as none yet."""
    try:
        return rows_in_the_database_file(path)
    except sqlite3.DatabaseError:  # "database disk image is malformed", mid-copy
        return 0


async def notes_database(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    async with db.write() as tx:
        await tx.conn.execute(sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
    return db


async def write_notes(db: Database, count: int) -> None:
    for i in range(count):
        async with db.write() as tx:
            await tx.conn.execute(
                sa.text("INSERT INTO notes (body) VALUES (:body)"), {"body": "x" * 500 + str(i)}
            )


def test_the_log_is_checkpointed_by_the_thread_and_emptied_at_close(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    checkpoints_in_commits: list[int] = []

    async def scenario() -> None:
        db = await notes_database(path)
        try:
            await write_notes(db, ROWS)
            deadline = time.monotonic() + 10
            while copied_so_far(path) < ROWS - CHECKPOINT_EVERY_WRITES:
                assert time.monotonic() < deadline, "the checkpointer copied nothing"
                await asyncio.sleep(0.05)
            async with db.read() as conn:
                mode = (await conn.execute(sa.text("PRAGMA wal_autocheckpoint"))).scalar()
                checkpoints_in_commits.append(mode)
        finally:
            await db.close()

    asyncio.run(scenario())
    assert checkpoints_in_commits == [0]
    # Closing copies the rest and removes the log.
    assert rows_in_the_database_file(path) == ROWS
    assert not (tmp_path / "db.sqlite-wal").exists()


def test_the_log_is_emptied_when_steady_writes_keep_it_from_starting_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writes that never pause: PASSIVE checkpoints copy the log but never catch up with
    # it, so without truncation it would only grow (30 MB here; 5.5 GB after 45,000 runs).
    monkeypatch.setattr(sqlite_store, "WAL_TRUNCATE_FRAMES", 64)
    path = tmp_path / "db.sqlite"
    wal = tmp_path / "db.sqlite-wal"
    sizes: list[int] = []

    async def scenario() -> None:
        db = await notes_database(path)
        try:
            for _ in range(10):
                await write_notes(db, ROWS)
                sizes.append(wal.stat().st_size)
                await asyncio.sleep(0)  # a turn of the loop, as a server gets: no pause
            assert db._sqlite is not None and db._sqlite._checkpointer is not None
            assert db._sqlite._checkpointer.truncations >= 1
        finally:
            await db.close()

    asyncio.run(scenario())
    # 6,000 transactions went through the log: it stays near 1 MB (without truncation it
    # reaches 30 MB here). A checkpoint thread slowed by a busy machine may let it pass a few
    # MB between two truncations, never near 30.
    assert max(sizes) < 10_000_000 and sizes[-1] < 4_000_000, sizes
    assert rows_in_the_database_file(path) == 10 * ROWS
