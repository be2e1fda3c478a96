"""The FastAPI application factory; the embedded worker runs in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from agentruns import __version__
from agentruns.api.auth import KeyCache
from agentruns.api.errors import install_error_handlers
from agentruns.api.limits import BodySizeLimit
from agentruns.api.responses import JSONResponse
from agentruns.api.routes import agents, bundles, events, runs, tools, webhooks
from agentruns.config import Settings
from agentruns.engine.executor import Executor
from agentruns.engine.models.transport import ModelClient, ModelHTTPClient
from agentruns.engine.presence import Presence
from agentruns.engine.tools import ToolRuntime
from agentruns.engine.worker import Worker
from agentruns.heap import freeze_startup_heap
from agentruns.store.database import Database
from agentruns.web import mount as mount_dashboard
from agentruns.webhooks import Dispatcher

log = logging.getLogger(__name__)


def build_worker(
    db: Database, settings: Settings, http: ModelClient, *, worker_id: str | None = None
) -> Worker:
    executor = Executor(
        db,
        http=http,
        default_model=settings.resolved_default_model(),
        flush_interval_s=settings.delta_flush_interval_s,
        tools=ToolRuntime.from_settings(settings),
    )
    return Worker(
        db,
        executor,
        concurrency=settings.worker_concurrency,
        lease_s=settings.lease_seconds,
        poll_interval_s=settings.poll_interval_s,
        max_attempts=settings.max_attempts,
        shutdown_grace_s=settings.shutdown_grace_s,
        worker_id=worker_id,
    )


def build_dispatcher(
    db: Database, settings: Settings, *, worker_id: str | None = None
) -> Dispatcher:
    """The webhook dispatcher that `serve` and every `worker` run."""
    return Dispatcher(
        db,
        retry_schedule=settings.webhook_retry_schedule,
        timeout_s=settings.webhook_timeout_s,
        allow_private=settings.webhook_allow_private,
        concurrency=settings.webhook_concurrency,
        poll_interval_s=settings.poll_interval_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        worker_id=worker_id,
    )


def build_presence(db: Database, settings: Settings) -> Presence:
    """This process's entry in the workers registry, under which it claims runs and webhooks."""
    return Presence(
        db, dead_after_s=settings.worker_dead_after_s, max_attempts=settings.max_attempts
    )


def _report_worker_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the embedded %s crashed", task.get_name(), exc_info=task.exception())


def model_http_client(settings: Settings) -> ModelHTTPClient:
    # Model calls stream for minutes; only connecting should be quick. A run makes one
    # model call at a time, so the worker's concurrency bounds the connections it needs.
    return ModelHTTPClient(
        connect_timeout_s=10.0, max_connections=max(64, settings.worker_concurrency)
    )


def create_app(settings: Settings, *, with_worker: bool = False) -> FastAPI:
    """The HTTP API; with `with_worker`, one worker runs in the same process and loop."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database.from_settings(settings)
        await db.start()
        await db.warm_up()
        app.state.db = db
        worker_task: asyncio.Task[None] | None = None
        worker: Worker | None = None
        presence = build_presence(db, settings)
        await presence.start()
        # Webhooks go out from every serve process, with or without its worker.
        dispatcher = build_dispatcher(db, settings, worker_id=presence.worker_id)
        dispatcher_task = asyncio.create_task(dispatcher.run(), name="webhook dispatcher")
        dispatcher_task.add_done_callback(_report_worker_exit)
        async with model_http_client(settings) as http:
            if with_worker:
                worker = build_worker(db, settings, http, worker_id=presence.worker_id)
                worker_task = asyncio.create_task(worker.run(), name="agentruns-worker")
                worker_task.add_done_callback(_report_worker_exit)
            freeze_startup_heap()
            try:
                yield
            finally:
                try:
                    if worker is not None and worker_task is not None:
                        worker.stop()
                        await worker_task
                finally:
                    dispatcher.stop()
                    await asyncio.gather(dispatcher_task, return_exceptions=True)
                    await presence.stop()  # after draining: what is left is handed back
                    await db.close()

    app = FastAPI(
        title="agentruns",
        version=__version__,
        summary="LLM agents as an asynchronous HTTP API",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.settings = settings
    app.state.key_cache = KeyCache(settings.auth_cache_s)
    # Read the config file now: a broken one stops the server at start, not at first use.
    app.state.default_bundle = bundles.default_bundle_from_settings(settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    # Routes are matched in order, one by one: the calls every run makes come first.
    app.include_router(events.router)
    app.include_router(runs.router)
    app.include_router(agents.router)
    app.include_router(webhooks.router)
    app.include_router(tools.router)
    app.include_router(bundles.router)
    # The web dashboard at `/` (docs/dashboard.md): pages and static files, no API of its own.
    mount_dashboard(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        if await request.app.state.db.ping():
            return PlainTextResponse("ready")
        return PlainTextResponse("database unreachable", status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # Imported at the first scrape, not at start: many deployments never scrape.
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
