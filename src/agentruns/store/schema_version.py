"""Whether the database schema is already at the newest migration, found without Alembic.

Alembic (with Mako) costs a process about 9 MB that it keeps until it exits, for a job
that, on every start but the first after an upgrade, finds nothing to do. So `serve`,
`worker` and `migrate` compare the database's `alembic_version` with the head read from
the migration files first, and import Alembic only when they differ or either is unclear.
"""

from __future__ import annotations

import ast
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from agentruns.store.database import normalize_url

VERSIONS_DIR = Path(__file__).parent / "migrations" / "versions"
_NOT_A_LITERAL = object()


def _literals(path: Path) -> dict[str, object]:
    """The module-level `name = <literal>` assignments of a migration file."""
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(value)
                except Exception:  # not a plain literal (ValueError, TypeError, ...)
                    values[target.id] = _NOT_A_LITERAL
    return values


def head_revision(versions_dir: Path = VERSIONS_DIR) -> str | None:
    """The one head revision of the migration files, or None if it cannot be told for sure
    (several heads, a file not written like the others): then Alembic decides."""
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        for path in versions_dir.glob("*.py"):
            values = _literals(path)
            revision, down = values.get("revision"), values.get("down_revision")
            if not isinstance(revision, str):
                return None
            revisions.add(revision)
            if isinstance(down, str):
                parents.add(down)
            elif isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
                parents.update(down)
            elif down is not None:
                return None
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


async def database_revisions(url: str) -> set[str] | None:
    """The revisions in the database's `alembic_version`, or None if it cannot be read
    (a new database has no such table yet)."""
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
            return {row[0] for row in rows}
    except Exception:
        # Whatever it is, the migrations meet it again and report it as they always did.
        return None
    finally:
        await engine.dispose()


async def schema_is_current(url: str) -> bool:
    """True only if the database is known to be at the head revision; False means "run
    the migrations", which is always safe (they are a no-op on an up-to-date database)."""
    head = head_revision()
    if head is None:
        return False
    return await database_revisions(url) == {head}
