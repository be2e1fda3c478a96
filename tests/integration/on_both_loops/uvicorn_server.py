"""An ASGI app served by uvicorn with the server's own HTTP protocol, on this test's loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from agentruns.api.http_protocol import HTTPProtocol
from agentruns.service import listening_socket


@contextlib.asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """(the server, its port) while inside; `options` go to `uvicorn.Config`."""
    config = uvicorn.Config(app, http=HTTPProtocol, lifespan="off", log_level="warning", **options)
    server = uvicorn.Server(config)
    sock = listening_socket("127.0.0.1", 0)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):  # at most 5 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
