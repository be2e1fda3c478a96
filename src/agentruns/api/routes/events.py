"""`GET /v1/agent-runs/{id}/events`: Server-Sent Events, replay then live.

A reader sends events strictly in `seq` order from where it is. Events that come
with their notification (committed in this process, or on PostgreSQL carried in
the payload of another process's) are sent as they are when they follow on
without a gap; in any other case (too large to carry, a notification was missed,
a poll woke the reader) it reads `run_events` after its position, so nothing is
skipped or repeated whatever wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator
from operator import attrgetter

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request

from agentruns.api.auth import current_project
from agentruns.api.errors import APIError, not_found
from agentruns.api.responses import EventStreamResponse
from agentruns.errors import StoreError
from agentruns.store import events as event_store
from agentruns.store.events import TERMINAL_EVENTS
from agentruns.store.notify import RunEvent
from agentruns.store.transitions import TERMINAL_STATUSES

log = logging.getLogger(__name__)
EVENT_ID = re.compile(r"[0-9]{1,10}")
MAX_SEQ = 2**31 - 1
PAGE = 500

router = APIRouter(prefix="/v1/agent-runs", tags=["agent runs"])


def format_event(event: RunEvent) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.seq,
        event.type.encode(),
        orjson.dumps(event.data),
    )


def _contiguous(pushed: list[RunEvent] | None, after: int) -> list[RunEvent] | None:
    """The pushed events that follow `after` without a gap (none if every one was sent
    already), or None if the table must be read: a gap, a wake-up that came without its
    events, or none pushed at all (a poll).

    The same events may be pushed twice (on PostgreSQL a process hears its own writes
    both directly and from the database), and in either order; and an event the first
    read returned may be pushed after it, having been committed while it ran.
    """
    if not pushed:
        return None
    fresh = []
    for event in sorted(pushed, key=attrgetter("seq")):
        if event.seq <= after:
            continue  # sent already, or pushed twice
        if event.seq != after + 1:
            return None
        fresh.append(event)
        after = event.seq
    return fresh


async def event_stream(
    request: Request,
    project: str,
    run_id: str,
    after: int,
    *,
    heartbeat_s: float,
    poll_s: float,
) -> AsyncGenerator[bytes | None, None]:
    """The run's events as SSE bytes, after a first item that says whether the run exists.

    The first item is None if the project has no such run, else b"". The first page is
    read for it, once notifications are watched (nothing committed in between is missed):
    so the route learns whether the run exists without a read of its own.
    """
    db = request.app.state.db
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    with db.notifier.watch_run(run_id) as watch:
        # A database error here reaches the route (a 503); later ones end the stream.
        status, batch = await event_store.status_and_events(
            db, run_id, after=after, limit=PAGE, project_id=project
        )
        if status is None:
            yield None
            return
        yield b""  # the run exists: the response can begin
        finished = status in TERMINAL_STATUSES
        more = len(batch) == PAGE
        while True:
            if batch:
                chunk = []
                for event in batch:
                    chunk.append(format_event(event))
                    after = event.seq
                    if event.type in TERMINAL_EVENTS:
                        break
                yield b"".join(chunk)
                if event.type in TERMINAL_EVENTS:
                    return
                last_sent = loop.time()
            elif finished:
                # Reconnected after the terminal event: nothing more will come this turn.
                return
            elif loop.time() - last_sent >= heartbeat_s:
                yield b": keep-alive\n\n"
                last_sent = loop.time()
            if not (more or watch.woken.is_set()):
                # asyncio.timeout, not wait_for: that would start a task at every wait.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(poll_s, heartbeat_s)):
                        await watch.woken.wait()
            # Events that came with their notification are sent as they are; anything
            # else (none came, or a gap) is read from the table.
            pushed = _contiguous(watch.take(), after)
            finished = more = False
            if pushed is not None:
                batch = pushed
            else:
                try:
                    status, batch = await event_store.status_and_events(
                        db, run_id, after=after, limit=PAGE
                    )
                except StoreError:
                    # The database is away: end the stream; the client resumes with
                    # Last-Event-ID once it is back (the response has begun: no 503 now).
                    log.warning("event stream of run %s ended: database unavailable", run_id)
                    return
                finished = status in TERMINAL_STATUSES
                more = len(batch) == PAGE


async def _rest(stream: AsyncGenerator[bytes | None, None]) -> AsyncGenerator[bytes, None]:
    async with contextlib.aclosing(stream):
        async for chunk in stream:
            if chunk:
                yield chunk


@router.get("/{run_id}/events")
async def stream_events(
    run_id: str,
    request: Request,
    project: str = Depends(current_project),
    after: int | None = Query(None, ge=0, le=MAX_SEQ),
    last_event_id: str | None = Header(None),
) -> EventStreamResponse:
    start = after or 0
    if last_event_id is not None:
        if not EVENT_ID.fullmatch(last_event_id.strip()) or int(last_event_id) > MAX_SEQ:
            raise APIError(400, "Last-Event-ID must be an event id (a non-negative integer)")
        start = max(start, int(last_event_id))
    settings = request.app.state.settings
    stream = event_stream(
        request,
        project,
        run_id,
        start,
        heartbeat_s=settings.sse_heartbeat_s,
        poll_s=settings.poll_interval_s,
    )
    first = await anext(stream)
    if first is None:
        await stream.aclose()
        raise not_found("run", run_id)
    return EventStreamResponse(
        _rest(stream),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
