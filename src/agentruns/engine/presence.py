"""This process's row in the `workers` registry: heartbeats, and reaping dead peers.

Every process that executes runs or sends webhooks has one `Presence`; its worker and
its dispatcher claim under `worker_id`. It heartbeats every quarter of `dead_after_s`
and, in the same loop, hands back what peers silent for `dead_after_s` held (see
`store/workers.py`).

A process judges others only after its own heartbeats have succeeded for a whole
`dead_after_s`: after a database outage every row looks stale, and each live process
must get a chance to heartbeat again before anyone is declared dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

from agentruns.store import workers
from agentruns.store.database import Database

log = logging.getLogger(__name__)

__all__ = ["Presence", "make_worker_id"]


def make_worker_id() -> str:
    """`host:pid:random`, at most 64 characters (the column's width) whatever the hostname."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Presence:
    def __init__(
        self,
        db: Database,
        *,
        dead_after_s: float = 10.0,
        max_attempts: int = 3,
        worker_id: str | None = None,
    ) -> None:
        self.db = db
        self.dead_after_s = dead_after_s
        self.max_attempts = max_attempts
        self.worker_id = worker_id or make_worker_id()
        self.interval_s = dead_after_s / 4
        self._hostname = socket.gethostname()
        self._started_at = time.time()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Register (retrying in the background if the database is down) and start the loop."""
        self._task = asyncio.create_task(self._loop(), name="agentruns-presence")

    async def stop(self) -> None:
        """Stop heartbeating and leave the registry: call after the worker has drained."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await workers.unregister_worker(self.db, self.worker_id)
        except Exception:
            # Our row goes stale and another process reaps it: only slower.
            log.warning("could not leave the workers registry", exc_info=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        healthy_since: float | None = None
        while True:
            try:
                known = await workers.heartbeat_worker(
                    self.db,
                    self.worker_id,
                    hostname=self._hostname,
                    pid=os.getpid(),
                    started_at=self._started_at,
                )
                if not known and healthy_since is not None:
                    log.warning("worker %s was declared dead; registered again", self.worker_id)
                healthy_since = healthy_since if healthy_since is not None else loop.time()
                if loop.time() - healthy_since >= self.dead_after_s:
                    await self._reap()
            except Exception:
                healthy_since = None
                log.warning("worker heartbeat failed", exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def _reap(self) -> None:
        reaped = await workers.reap_dead_workers(
            self.db,
            dead_after_s=self.dead_after_s,
            max_attempts=self.max_attempts,
            exclude=self.worker_id,
        )
        if reaped.workers:
            log.warning(
                "%d dead workers: re-queued %d runs and %d webhook attempts",
                reaped.workers,
                reaped.runs,
                reaped.deliveries,
            )
