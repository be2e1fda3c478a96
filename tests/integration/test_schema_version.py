"""Starting on an up-to-date database skips Alembic, and only then (see schema_version.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from agentruns.store.migrate import alembic_config, upgrade
from agentruns.store.schema_version import database_revisions, head_revision, schema_is_current

MIGRATE_AND_REPORT = """
import sys
from agentruns import service
from agentruns.config import Settings
service.migrate(Settings())
print("alembic" in sys.modules)
"""


def migrate_in_a_new_process(url: str) -> bool:
    """Run `service.migrate` in a fresh interpreter; whether it imported Alembic."""
    env = {**os.environ, "AGENTRUNS_DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-c", MIGRATE_AND_REPORT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip() == "True"


def test_head_revision_is_alembics() -> None:
    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


def write_revision(folder: Path, revision: str, down: str) -> None:
    (folder / f"{revision}.py").write_text(f"revision = {revision!r}\ndown_revision = {down}\n")


def test_head_revision_is_none_unless_there_is_one_clear_head(tmp_path: Path) -> None:
    write_revision(tmp_path, "a", "None")
    write_revision(tmp_path, "b", "'a'")
    assert head_revision(tmp_path) == "b"
    write_revision(tmp_path, "c", "'a'")
    assert head_revision(tmp_path) is None  # two heads
    write_revision(tmp_path, "d", "('b', 'c')")
    assert head_revision(tmp_path) == "d"  # merged again
    (tmp_path / "e.py").write_text("revision = make_id()\ndown_revision = 'd'\n")
    assert head_revision(tmp_path) is None


async def test_schema_is_current_only_at_the_head(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'agentruns.db'}"
    assert await database_revisions(url) is None
    assert not await schema_is_current(url)
    await upgrade(url, "0001")
    assert await database_revisions(url) == {"0001"}
    assert not await schema_is_current(url)
    await upgrade(url)
    assert await schema_is_current(url)


async def test_a_migrated_database_is_current(db_url: str) -> None:
    assert await schema_is_current(db_url)


def test_migrate_imports_alembic_only_when_there_is_work(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'agentruns.db'}"
    assert migrate_in_a_new_process(url)
    assert not migrate_in_a_new_process(url)


def test_an_unreadable_database_still_fails_as_before(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'agentruns.db'}"
    env = {**os.environ, "AGENTRUNS_DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-c", MIGRATE_AND_REPORT], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "unable to open database file" in done.stderr
