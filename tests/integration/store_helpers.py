"""Builders for store-level tests (imported by the integration tests)."""

from __future__ import annotations

from typing import Any

from agentruns.store import agents, projects, runs
from agentruns.store.database import Database
from agentruns.store.runs import NewRun


async def make_project(db: Database, name: str = "default") -> str:
    _key, project_id = await projects.create_api_key(db, name)
    return project_id


async def make_agent(db: Database, project_id: str, **spec: Any) -> dict[str, Any]:
    return await agents.create_agent(db, project_id, {"name": "a", "tools": [], **spec})


async def make_run(
    db: Database, project_id: str, agent_id: str, text: str = "hi", **options: Any
) -> dict[str, Any]:
    new = NewRun(
        project_id=project_id,
        agent_id=agent_id,
        agent_version=1,
        messages=[{"role": "user", "content": text}],
        results=[],
        timeout_s=options.pop("timeout_s", 600.0),
        **options,
    )
    run, _created = await runs.create_run(db, new)
    return run
