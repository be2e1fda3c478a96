"""The dispatcher: drains the webhook outbox, one leased attempt at a time per delivery.

It runs in `agentruns serve` and in every `agentruns worker`, as a task of its
own with its own HTTP client: a slow or dead receiver costs a coroutine here
and never touches a run. A new delivery wakes it through the notifier;
otherwise it sleeps until the next retry is due, at most `poll_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence

import httpx
import orjson

from agentruns.store import webhooks as outbox
from agentruns.store.clock import now
from agentruns.store.database import Database
from agentruns.webhooks.retry import retry_delay
from agentruns.webhooks.sender import AttemptResult, post_webhook, webhook_client
from agentruns.webhooks.signing import signature_headers

log = logging.getLogger(__name__)

# Never spin: even when something is due at once, wait this long between empty claims.
_MIN_IDLE_S = 0.02


def lease_for(timeout_s: float) -> float:
    """How long an attempt is held: its whole timeout, plus ample time to record the outcome."""
    return max(3 * timeout_s, timeout_s + 2)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        *,
        retry_schedule: Sequence[float],
        timeout_s: float = 10.0,
        allow_private: bool = False,
        concurrency: int = 16,
        poll_interval_s: float = 1.0,
        shutdown_grace_s: float = 10.0,
        http: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.db = db
        # The registered worker this dispatcher belongs to: if it dies, its attempts are
        # made again as soon as it is found dead rather than when their lease expires.
        self.worker_id = worker_id
        self.retry_schedule = list(retry_schedule)
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.shutdown_grace_s = shutdown_grace_s
        self.lease_s = lease_for(timeout_s)
        self._http = http
        self._rng = rng or random.Random()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    def stop(self) -> None:
        """Stop claiming; attempts in flight get `shutdown_grace_s` to finish."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            http = self._http
            if http is None:
                client = webhook_client(max_connections=self.concurrency)
                http = await stack.enter_async_context(client)
            stack.enter_context(
                self.db.notifier.on_run_event(outbox.DISPATCH_WAKE_KEY, self._on_wake)
            )
            try:
                await self._loop(http)
            finally:
                await self._drain()

    def _on_wake(self, _event_type: str) -> None:
        self._wake.set()

    async def _loop(self, http: httpx.AsyncClient) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            free = self.concurrency - len(self._in_flight)
            if free > 0:
                claimed = await self._claim(free)
                for delivery in claimed:
                    task = asyncio.create_task(
                        self._attempt(http, delivery), name=f"webhook-{delivery.id}"
                    )
                    self._in_flight.add(task)
                    task.add_done_callback(self._finished)
                if len(claimed) == free:
                    continue  # there may be more due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), await self._idle_time(free > 0))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()  # a slot is free again

    async def _claim(self, limit: int) -> list[outbox.ClaimedDelivery]:
        try:
            return await outbox.claim_due_deliveries(
                self.db, limit=limit, lease_s=self.lease_s, worker_id=self.worker_id
            )
        except Exception:
            # A dropped connection, a lock timeout: the outbox is still there next time.
            log.warning("cannot claim webhook deliveries; retrying", exc_info=True)
            return []

    async def _idle_time(self, can_claim: bool) -> float:
        """Sleep until the next delivery is due (at most a poll interval)."""
        if not can_claim:
            return self.poll_interval_s
        try:
            due = await outbox.next_due_at(self.db)
        except Exception:
            return self.poll_interval_s
        if due is None:
            return self.poll_interval_s
        return min(max(due - now(), _MIN_IDLE_S), self.poll_interval_s)

    async def _attempt(self, http: httpx.AsyncClient, delivery: outbox.ClaimedDelivery) -> None:
        try:
            result = await self._send(http, delivery)
        except Exception as exc:
            log.exception("webhook %s: attempt %d crashed", delivery.id, delivery.attempt)
            result = AttemptResult(False, True, error=f"internal error: {exc}")
        next_attempt_at = None
        error = result.error
        if not result.delivered and result.retryable:
            delay = retry_delay(
                self.retry_schedule,
                delivery.series_attempt,
                retry_after=result.retry_after,
                rng=self._rng,
            )
            if delay is None:
                error = f"{error} (no retries left)"
            else:
                next_attempt_at = now() + delay
        try:
            held = await outbox.record_attempt(
                self.db,
                delivery,
                delivered=result.delivered,
                status_code=result.status_code,
                error=error,
                next_attempt_at=next_attempt_at,
            )
        except Exception:
            # The lease will expire and another attempt will be made: at least once.
            log.warning("webhook %s: cannot record attempt %d", delivery.id, delivery.attempt)
            return
        if not held:
            log.warning("webhook %s: lost the lease of attempt %d", delivery.id, delivery.attempt)
        elif not result.delivered:
            log.info("webhook %s: attempt %d failed: %s", delivery.id, delivery.attempt, error)

    async def _send(
        self, http: httpx.AsyncClient, delivery: outbox.ClaimedDelivery
    ) -> AttemptResult:
        secrets = await outbox.signing_secrets(self.db, delivery.project_id)
        body = orjson.dumps(delivery.payload)
        # The timestamp is the attempt's: receivers refuse messages older than a few minutes.
        headers = signature_headers(delivery.id, body, secrets)
        return await post_webhook(
            http,
            delivery.url,
            body,
            headers,
            timeout_s=self.timeout_s,
            allow_private=self.allow_private,
        )

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        tasks = list(self._in_flight)
        _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace_s)
        for task in pending:
            task.cancel()
        # Cancelled attempts keep their lease until it expires; then they are made again.
        await asyncio.gather(*pending, return_exceptions=True)
