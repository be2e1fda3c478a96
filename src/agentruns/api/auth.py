"""Bearer API keys: every `/v1` call resolves to the project that owns the key."""

from __future__ import annotations

from fastapi import Request

from agentruns.api.errors import APIError
from agentruns.store import projects


async def current_project(request: Request) -> str:
    """FastAPI dependency: the caller's project id, or a 401."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    project_id = await projects.authenticate(request.app.state.db, key.strip())
    if project_id is None:
        raise APIError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return project_id
