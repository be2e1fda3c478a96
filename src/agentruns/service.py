"""Process entry points: `serve` (API + embedded worker), `worker` (a worker alone), `migrate`."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvicorn
from rich.console import Console

from agentruns.config import Settings
from agentruns.heap import freeze_startup_heap
from agentruns.store import projects
from agentruns.store.database import Database
from agentruns.store.schema_version import schema_is_current

log = logging.getLogger(__name__)
T = TypeVar("T")


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def _bootstrap_key(settings: Settings) -> str | None:
    """On a fresh database, create the default project and its first key."""
    db = Database(settings.database_url, pool_size=1, max_overflow=0)
    try:
        return await projects.create_first_api_key(db)
    finally:
        await db.close()


def migrate(settings: Settings) -> None:
    """Bring the database schema up to date.

    Safe to run from several processes at once: on PostgreSQL they take turns under an
    advisory lock, and the ones that come after find nothing left to do.
    """
    asyncio.run(_migrate(settings.database_url))


async def _migrate(url: str) -> None:
    if await schema_is_current(url):
        return  # without importing Alembic, which would stay in memory for nothing
    from agentruns.store.migrate import upgrade

    await upgrade(url)


def prepare_database(settings: Settings, *, run_migrations: bool = True) -> str | None:
    """Apply migrations (unless told not to); return a new API key if this was the first start."""
    if run_migrations:
        migrate(settings)
    return asyncio.run(_bootstrap_key(settings))


KEEP_ALIVE_S = 65


def serve(
    settings: Settings, *, host: str, port: int, with_worker: bool, run_migrations: bool = True
) -> None:
    """Run the API (and, unless `with_worker` is False, one worker) until interrupted."""
    from agentruns.api.app import create_app
    from agentruns.api.http_protocol import HTTPProtocol
    from agentruns.credentials import save_credentials

    configure_logging()
    console = Console(stderr=True)
    key = prepare_database(settings, run_migrations=run_migrations)
    base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if key is not None:
        path = save_credentials(settings.state_dir, base_url=base_url, api_key=key)
        console.print(
            "[bold]First start:[/] created the default project and an API key (shown once):"
        )
        print(key, flush=True)
        console.print(f"Saved for the CLI and SDK in {path}")
    mode = "API + worker" if with_worker else "API only"
    console.print(f"agentruns ({mode}) on [bold]{base_url}[/]  (docs: {base_url}/docs)")
    config = uvicorn.Config(
        create_app(settings, with_worker=with_worker),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        # Longer than clients keep idle connections (httpx: 5 s, like uvicorn's default):
        # with equal timeouts a client under load reuses a connection just as the server
        # drops it, and its request fails with a read error.
        timeout_keep_alive=KEEP_ALIVE_S,
        http=HTTPProtocol,
    )
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), created so that its connections get TCP_NODELAY.

    asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP, which uvicorn's own
    sockets do not; without it, Nagle's algorithm holds small writes (an SSE event, a
    response body after its headers) until the peer's delayed ACK, about 40 ms later.
    """
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (as uvicorn does for `serve`), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def run_worker(settings: Settings, *, run_migrations: bool = True) -> None:
    """Run a worker (and a webhook dispatcher), no HTTP, until SIGINT/SIGTERM; then drain."""
    from agentruns.api.app import (
        build_dispatcher,
        build_presence,
        build_worker,
        model_http_client,
    )

    configure_logging()
    if run_migrations:
        migrate(settings)

    async def main() -> None:
        db = Database.from_settings(settings)
        await db.start()
        await db.warm_up()
        presence = build_presence(db, settings)
        await presence.start()
        try:
            async with model_http_client(settings) as http:
                worker = build_worker(db, settings, http, worker_id=presence.worker_id)
                dispatcher = build_dispatcher(db, settings, worker_id=presence.worker_id)

                def stop() -> None:
                    worker.stop()
                    dispatcher.stop()

                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop)
                freeze_startup_heap()
                tasks = [asyncio.create_task(worker.run()), asyncio.create_task(dispatcher.run())]
                # Both stop on a signal; if either crashes, the other stops too and we fail.
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                stop()
                for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(outcome, BaseException):
                        raise outcome
        finally:
            await presence.stop()  # after draining: what is left is handed back
            await db.close()

    run_event_loop(main())
