"""Fast JSON responses (orjson), the `{"data": ...}` envelopes, and event streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def envelope(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse({"data": data}, status_code=status_code)


def list_envelope(items: list[Any], next_cursor: str | None) -> JSONResponse:
    return JSONResponse(
        {"data": items, "has_more": next_cursor is not None, "next_cursor": next_cursor}
    )


class EventStreamResponse(Response):
    """A `text/event-stream` response sent from an async generator of byte chunks; it stops
    at once if the client leaves (the generator is closed where it waits).

    Starlette's `StreamingResponse` does the same with an anyio task group per response:
    two tasks and their cancel scopes, a few percent of a run's CPU and more memory for
    each of thousands of subscribers. Here the stream goes on in the request's own task and
    one plain task waits for the client to leave.
    """

    media_type = "text/event-stream"

    def __init__(
        self, chunks: AsyncGenerator[bytes, None], headers: Mapping[str, str] | None = None
    ) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        cancellations = streaming.cancelling()
        sending = True
        left = False

        def on_leaving(ended: asyncio.Future[None]) -> None:
            nonlocal left
            if not ended.cancelled():
                ended.exception()  # a server whose receive raised: taken as leaving
            # Also called once the response is complete (the server then answers the
            # wait with a disconnect) or the watch is cancelled: only a client that left
            # while the stream still went on stops it, not whatever the task does next.
            if sending and not left:
                left = True
                streaming.cancel()

        watch = asyncio.ensure_future(_until_disconnected(receive))
        watch.add_done_callback(on_leaving)
        try:
            # Closed on every way out, a cancellation inside `send` included: the generator
            # may hold a subscription.
            async with contextlib.aclosing(self.chunks):
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sending = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # Absorbed only if the client's leaving is the one cancellation asked for: one
            # from elsewhere (a shutdown, a timeout) that came first still goes on.
            if not left or streaming.uncancel() > cancellations:
                raise
        finally:
            sending = False
            watch.cancel()


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
