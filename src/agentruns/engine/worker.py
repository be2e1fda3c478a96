"""A worker: claims runs, executes many at once on asyncio, keeps their leases alive.

Notifications only wake the claim loop early; polling every
`poll_interval_s` is the safety net. On shutdown the worker stops claiming,
lets running runs finish for a grace period, then hands the rest back.

A database failure in the middle of a run (a dropped connection, a server
restart) is not the run's fault: the worker gives the run up and hands it back
to the queue, and whoever claims it next resumes from the last committed step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agentruns.engine.executor import Executor, RunStart
from agentruns.engine.presence import make_worker_id
from agentruns.errors import StoreError
from agentruns.store import queue, tool_calls
from agentruns.store.database import Database
from agentruns.store.queue import Lease

log = logging.getLogger(__name__)
# Runs claimed per transaction at most. Small, so that on PostgreSQL one worker doesn't take
# a burst that idle workers could have started at once.
CLAIM_BATCH = 8

__all__ = ["Worker", "make_worker_id"]


class Worker:
    def __init__(
        self,
        db: Database,
        executor: Executor,
        *,
        concurrency: int = 32,
        lease_s: float = 30.0,
        poll_interval_s: float = 1.0,
        max_attempts: int = 3,
        shutdown_grace_s: float = 10.0,
        worker_id: str | None = None,
    ) -> None:
        self.db = db
        self.executor = executor
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.max_attempts = max_attempts
        self.shutdown_grace_s = shutdown_grace_s
        self.worker_id = worker_id or make_worker_id()
        self._running: dict[str, tuple[Lease, asyncio.Task[None]]] = {}
        self._stopping = asyncio.Event()
        # Set while every slot is taken: the next run to finish then wakes the claim loop.
        self._slot_wanted: asyncio.Event | None = None
        # What the claim loop waits on between claims.
        self._wake: asyncio.Event | None = None

    def stop(self) -> None:
        """Ask the worker to stop claiming and shut down gracefully."""
        self._stopping.set()
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        log.info("worker %s started (concurrency %d)", self.worker_id, self.concurrency)
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="agentruns-heartbeat"),
            asyncio.create_task(self._reaper_loop(), name="agentruns-reaper"),
        ]
        try:
            with self.db.notifier.on_run_cancelled(self._cancelled):
                try:
                    await self._claim_loop()
                finally:
                    await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.executor.aclose()  # stops the MCP servers this worker started
            log.info("worker %s stopped", self.worker_id)

    async def _claim_loop(self) -> None:
        with self.db.notifier.watch_queue() as wake:
            self._wake = wake
            while not self._stopping.is_set():
                wake.clear()
                if len(self._running) >= self.concurrency:
                    self._slot_wanted = wake
                elif await self._claim_some():
                    # On SQLite a claim never suspends: without this, a deep queue would be
                    # claimed whole before any claimed run starts or any request is served.
                    await asyncio.sleep(0)
                    continue
                # Awaited directly, not through a task of its own: a notification then
                # reaches the claim in one turn of the loop. `stop()` sets `wake` too.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await wake.wait()

    async def _claim_some(self) -> bool:
        """Claim up to `CLAIM_BATCH` runs for the free slots and start them.

        True when it took all it asked for: the queue may hold more. Fewer means it was
        empty; a run queued since then wakes the loop, so asking again at once would
        only cost a write transaction.
        """
        free = min(self.concurrency - len(self._running), CLAIM_BATCH)
        try:
            claimed = await queue.claim_runs_to_execute(self.db, self.worker_id, self.lease_s, free)
        except Exception:
            # A dropped connection, a lock timeout: the queue is still there next poll.
            log.warning("cannot claim a run; retrying", exc_info=True)
            await self._hand_back_unknown_claims()
            await asyncio.sleep(self.poll_interval_s)
            return False
        for lease, row, history in claimed:
            start = RunStart.of(row, history)
            task = asyncio.create_task(self._execute(lease, start), name=f"run-{lease.run_id}")
            self._running[lease.token] = (lease, task)
        return len(claimed) == free

    async def _hand_back_unknown_claims(self) -> None:
        """Hand back the runs the database says this worker holds but it is not executing.

        A claim whose answer was lost (the connection broke after the database ran it) took
        runs this worker never heard of; they would otherwise wait for their leases to
        expire, and each lose an attempt.
        """
        try:
            held = await queue.leases_held_by(self.db, self.worker_id)
            for lease in held:
                if lease.token not in self._running:
                    log.warning(
                        "run %s: claimed, but the answer was lost; handing it back", lease.run_id
                    )
                    await queue.release_lease(self.db, lease)
        except Exception:
            log.warning("cannot check for lost claims; their leases will expire", exc_info=True)

    def _cancelled(self, run_id: str) -> None:
        # Someone cancelled the run: abandon its in-flight model call now. (A scan of the
        # running runs, rare, rather than a subscription held by each run.)
        current = asyncio.current_task()
        for lease, task in list(self._running.values()):
            if lease.run_id == run_id and task is not current:
                task.cancel()

    async def _execute(self, lease: Lease, start: RunStart) -> None:
        try:
            await self.executor.execute(lease, start)
        except asyncio.CancelledError:
            log.info("run %s: execution cancelled", lease.run_id)
        except StoreError as exc:
            log.warning("run %s: the database failed (%s); handing it back", lease.run_id, exc)
            await self._hand_back(lease)
        except Exception:
            log.exception("run %s: executor crashed", lease.run_id)
        finally:
            self._running.pop(lease.token, None)
            if self._slot_wanted is not None:
                self._slot_wanted.set()
                self._slot_wanted = None

    async def _hand_back(self, lease: Lease) -> None:
        """Return the run to the queue, retrying while the database comes back.

        The lease stays ours meanwhile (the heartbeat keeps extending it); if the database
        stays away longer than a lease, the lease expires and any worker re-queues the run.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lease_s
        delay = 0.1
        while True:
            try:
                await queue.release_lease(self.db, lease)
                return
            except StoreError:
                if loop.time() + delay > deadline:
                    log.warning("run %s: cannot hand it back; its lease will expire", lease.run_id)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            leases = [lease for lease, _ in self._running.values()]
            try:
                held = await queue.extend_leases(self.db, leases, self.lease_s)
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
                continue
            for lease in leases:
                running = self._running.get(lease.token)
                if lease.token not in held and running is not None:
                    running[1].cancel()

    async def _reaper_loop(self) -> None:
        while True:
            try:
                count = await queue.requeue_expired_leases(self.db, self.max_attempts)
                if count:
                    log.warning("re-queued %d runs whose worker was lost", count)
                count = await tool_calls.fail_expired_tool_waits(self.db)
                if count:
                    log.info("%d runs waited too long for tool responses", count)
            except Exception:
                log.warning("reaper failed", exc_info=True)
            await asyncio.sleep(self.lease_s / 2)

    async def _drain(self) -> None:
        if not self._running:
            return
        tasks = [task for _, task in self._running.values()]
        _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace_s)
        leases = [lease for lease, task in list(self._running.values()) if task in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for lease in leases:
            try:
                await queue.release_lease(self.db, lease)
            except Exception:
                log.warning("could not hand back run %s", lease.run_id, exc_info=True)
