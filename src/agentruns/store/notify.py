"""Wake-ups after commit: which run got which new event, and when the queue has work.

Notifications are hints, never the source of truth: a reader takes the events
they carry only when they follow on from what it has sent without a gap, and
re-reads the tables otherwise; everything that waits on a notification also
polls. In one process a `Notifier` wakes waiters directly; on PostgreSQL the
writer also issues `NOTIFY` in its transaction (delivered only on commit) and a
`PostgresListener` relays other processes' notifications into the local
`Notifier`.

An events notification's payload is `<run id>:<event type>`, the type of the last
event committed, optionally followed by `:<seq of the first>:<JSON [[type, data], ...]>`
when the writer could include the events themselves (`events_payload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "agentruns_events"
QUEUE_CHANNEL = "agentruns_queue"
# PostgreSQL refuses a payload of 8,000 bytes or more; the run id and numbers need the rest.
MAX_PAYLOAD_EVENTS_BYTES = 7_500


@dataclass(frozen=True, slots=True)
class RunEvent:
    seq: int
    type: str
    data: dict[str, Any]


def events_payload(events: list[tuple[str, str]]) -> str:
    """The events part of a notification: JSON `[[type, data], ...]` from each event's type
    and its data already encoded as JSON; empty if too large to send."""
    body = "[" + ",".join(f'["{kind}",{data}]' for kind, data in events) + "]"
    return body if len(body.encode()) <= MAX_PAYLOAD_EVENTS_BYTES else ""


def parse_events_payload(payload: str) -> tuple[str, str, list[RunEvent] | None]:
    """(run id, event type, the events if the payload carries them) of a notification."""
    run_id, _, rest = payload.partition(":")
    event_type, _, rest = rest.partition(":")
    first, _, body = rest.partition(":")
    if not body:
        return run_id, event_type, None
    try:
        start, decoded = int(first), orjson.loads(body)
        events = [RunEvent(start + i, kind, data) for i, (kind, data) in enumerate(decoded)]
        if not isinstance(decoded, list) or not all(
            isinstance(e.type, str) and isinstance(e.data, dict) for e in events
        ):
            raise ValueError(body)
    except (ValueError, TypeError):
        log.warning("ignored the events of a malformed notification for run %s", run_id)
        return run_id, event_type, None
    return run_id, event_type, events or None


class RunWatch:
    """What one reader of a run is told: a wake-up, and the events that came with it
    (committed in this process, or carried by another process's notification)."""

    __slots__ = ("pushed", "uncarried", "woken")

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.pushed: list[RunEvent] = []
        self.uncarried = False  # a wake-up came without its events

    def notify(self, events: list[RunEvent] | None) -> None:
        if events:
            self.pushed.extend(events)
        else:
            self.uncarried = True
        self.woken.set()

    def take(self) -> list[RunEvent] | None:
        """The events pushed since the last call (possibly none), or None if a wake-up
        since then came without its events, which must then be read; re-arms the wake-up."""
        pushed = None if self.uncarried else self.pushed
        self.pushed, self.uncarried = [], False
        self.woken.clear()
        return pushed


class Notifier:
    """In-process fan-out of run-event and queue wake-ups."""

    def __init__(self) -> None:
        self._run_waiters: dict[str, set[RunWatch]] = defaultdict(set)
        self._queue_waiters: set[asyncio.Event] = set()
        self._run_callbacks: dict[str, set[Callable[[str], None]]] = defaultdict(set)
        self._cancel_callbacks: list[Callable[[str], None]] = []

    def run_changed(
        self, run_id: str, event_type: str, events: list[RunEvent] | None = None
    ) -> None:
        """Wake the run's readers; `events` are the committed events themselves, when known."""
        for watch in self._run_waiters.get(run_id, ()):
            watch.notify(events)
        for callback in list(self._run_callbacks.get(run_id, ())):
            callback(event_type)
        if event_type == "run.cancelled":
            for on_cancelled in list(self._cancel_callbacks):
                on_cancelled(run_id)

    def is_watched(self, run_id: str) -> bool:
        return run_id in self._run_waiters

    def queue_changed(self) -> None:
        for waiter in self._queue_waiters:
            waiter.set()

    def wake_all(self) -> None:
        """Wake every reader and the claimers: notifications may have been missed."""
        for watches in self._run_waiters.values():
            for watch in watches:
                watch.notify(None)
        self.queue_changed()

    @contextlib.contextmanager
    def watch_run(self, run_id: str) -> Iterator[RunWatch]:
        """Yield a `RunWatch` woken whenever the run gets a new event."""
        watch = RunWatch()
        self._run_waiters[run_id].add(watch)
        try:
            yield watch
        finally:
            self._discard(self._run_waiters, run_id, watch)

    @contextlib.contextmanager
    def on_run_event(self, run_id: str, callback: Callable[[str], None]):  # type: ignore[no-untyped-def]
        """Call `callback(event_type)` for every new event of the run while inside."""
        self._run_callbacks[run_id].add(callback)
        try:
            yield
        finally:
            self._discard(self._run_callbacks, run_id, callback)

    @contextlib.contextmanager
    def on_run_cancelled(self, callback: Callable[[str], None]) -> Iterator[None]:
        """Call `callback(run_id)` whenever any run is cancelled, while inside."""
        self._cancel_callbacks.append(callback)
        try:
            yield
        finally:
            self._cancel_callbacks.remove(callback)

    @contextlib.contextmanager
    def watch_queue(self):  # type: ignore[no-untyped-def]
        waiter = asyncio.Event()
        self._queue_waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._queue_waiters.discard(waiter)

    @staticmethod
    def _discard(registry: dict, key: str, item: object) -> None:  # type: ignore[type-arg]
        items = registry.get(key)
        if items is not None:
            items.discard(item)
            if not items:
                del registry[key]


class PostgresListener:
    """Relays NOTIFY from other processes into a local `Notifier`, reconnecting when dropped.

    The connection is its own (LISTEN needs a session that stays open, which a pooled
    connection is not). A server restart closes it and we notice at once; a connection that
    died silently (a vanished host, a NAT timeout) is found by a periodic `SELECT 1`.
    """

    def __init__(
        self,
        dsn: str,
        notifier: Notifier,
        *,
        connect_timeout_s: float = 5.0,
        check_interval_s: float = 10.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._notifier = notifier
        self._connect_timeout_s = connect_timeout_s
        self._check_interval_s = check_interval_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.connections = 0  # how many times it has (re)connected, for tests and logs

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="agentruns-pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notification(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel == QUEUE_CHANNEL:
            self._notifier.queue_changed()
        else:
            run_id, _, rest = payload.partition(":")
            if self._notifier.is_watched(run_id):
                # Someone here follows the run: the events, when the payload has them,
                # spare each of its readers a read of the table.
                self._notifier.run_changed(*parse_events_payload(payload))
            else:
                self._notifier.run_changed(run_id, rest.partition(":")[0])

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._session()
                backoff = 0.1  # it was up; the next reconnect starts fast again
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("PostgreSQL LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    async def _session(self) -> None:
        """One connection's life: listen until it drops."""
        import asyncpg

        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout_s,
            server_settings={"application_name": "agentruns-listener"},
        )
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        try:
            await conn.add_listener(EVENTS_CHANNEL, self._on_notification)
            await conn.add_listener(QUEUE_CHANNEL, self._on_notification)
            self.connections += 1
            self.connected.set()
            # Anything committed while we were away is found by re-reading: wake everyone.
            self._notifier.wake_all()
            while not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), self._check_interval_s)
                if not conn.is_closed():
                    await conn.fetchval("SELECT 1", timeout=self._connect_timeout_s)
            raise ConnectionError("the server closed the connection")
        finally:
            conn.terminate()
