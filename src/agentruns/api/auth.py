"""Bearer API keys: every `/v1` call resolves to the project that owns the key.

A valid key is remembered for `AGENTRUNS_AUTH_CACHE_S` seconds (by its hash), so
that a run's requests don't each cost a database read; a revoked key therefore
stops working within that time.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from fastapi import Request

from agentruns.api.errors import APIError
from agentruns.store import projects


class KeyCache:
    """Recently authenticated keys (by hash) and their project, for a few seconds."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key_hash: str) -> str | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, project_id: str) -> None:
        if self.ttl_s <= 0:
            return
        self._entries[key_hash] = (project_id, time.monotonic() + self.ttl_s)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


async def current_project(request: Request) -> str:
    """FastAPI dependency: the caller's project id, or a 401."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    cache: KeyCache = request.app.state.key_cache
    key_hash = projects.hash_key(key)
    project_id = cache.get(key_hash)
    if project_id is None:
        project_id = await projects.authenticate(request.app.state.db, key)
        if project_id is None:
            raise APIError(
                401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
            )
        cache.put(key_hash, project_id)
    return project_id
