"""The dispatcher on SQLite and PostgreSQL: woken by the commit of a status change, it
signs, sends and records; its retries follow the schedule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentruns.store import runs, webhooks
from agentruns.store.database import Database
from agentruns.testing.server import FakeServer, start_in_thread
from agentruns.webhooks import Dispatcher
from integration.store_helpers import make_agent, make_project, make_run


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.app = Starlette(routes=[Route("/", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        self.received.append((time.monotonic(), dict(request.headers), await request.body()))
        return Response(status_code=self.statuses.pop(0) if self.statuses else 204)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, FakeServer]]:
    hooks = Receiver()
    with start_in_thread(hooks.app) as server:
        yield hooks, server


async def _until(condition, timeout_s: float = 5) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_commit_wakes_the_dispatcher_which_signs_sends_and_retries(
    db_url: str, receiver: tuple[Receiver, FakeServer]
) -> None:
    hooks, server = receiver
    hooks.statuses = [503]
    api_db = Database(db_url)
    # PostgreSQL wakes other processes (NOTIFY): give the dispatcher a `Database` of its
    # own. SQLite wakes only its own process, where `serve` runs API, worker and dispatcher.
    dispatcher_db = Database(db_url) if api_db.is_postgres else api_db
    await dispatcher_db.start()
    # Polling every minute: only the wake-up can make the webhook arrive quickly.
    dispatcher = Dispatcher(
        dispatcher_db, retry_schedule=[0.2], allow_private=True, poll_interval_s=60
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        project = await make_project(api_db)
        agent = await make_agent(api_db, project)
        run = await make_run(api_db, project, agent["id"], callback_url=server.url)
        await asyncio.sleep(0.3)  # the dispatcher is idle, waiting
        started = time.monotonic()
        await runs.cancel_run(api_db, project, run["id"])
        await _until(lambda: len(hooks.received) == 2)
        first, second = hooks.received
        assert first[0] - started < 1.0  # woken, not polled
        assert second[0] - first[0] >= 0.15  # the retry waited for the schedule (0.2 s ±20 %)
        secret = (await webhooks.get_secret(api_db, project))["secret"]
        for _at, headers, body in (first, second):
            event = Webhook(secret).verify(body, headers)
            assert event["type"] == "run.cancelled" and event["data"]["id"] == run["id"]
        assert first[1]["webhook-id"] == second[1]["webhook-id"]
    finally:
        dispatcher.stop()
        await task  # stopping waits for the attempt in flight: its outcome is recorded
    try:
        [delivery] = await webhooks.list_run_deliveries(api_db, project, run["id"]) or []
        assert delivery["status"] == "delivered"
        assert [a["status_code"] for a in delivery["attempts"]] == [503, 204]
    finally:
        await api_db.close()
        if dispatcher_db is not api_db:
            await dispatcher_db.close()
