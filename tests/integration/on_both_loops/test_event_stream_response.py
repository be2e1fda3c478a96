"""An event stream response sends its chunks as they come, and stops at once when the
client leaves while it waits, without disturbing the connection otherwise."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentruns.api.responses import EventStreamResponse
from integration.on_both_loops.uvicorn_server import serving


class Streams:
    """An ASGI app whose every response streams `: n` chunks until `stop` is set."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.stop = asyncio.Event()
        self.closed: list[str] = []  # how each stream ended: "done" or "closed"
        self.handler_errors: list[BaseException] = []

    async def _chunks(self) -> AsyncIterator[bytes]:
        ended = "closed"
        try:
            for n in range(self.chunks):
                yield b": %d\n\n" % n
            await self.stop.wait()
            ended = "done"
        finally:
            self.closed.append(ended)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            response = EventStreamResponse(self._chunks(), headers={"Cache-Control": "no-cache"})
            await response(scope, receive, send)
            # What the request's task does after the response (a middleware's exit, say)
            # is not cancelled by the response's watch for a disconnect.
            await asyncio.sleep(0.02)
        except BaseException as exc:
            self.handler_errors.append(exc)
            raise


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


async def _wait_for(condition: Any) -> None:
    for _ in range(200):  # at most 2 s
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("the condition did not come true within 2 s")


async def test_chunks_arrive_in_order_and_the_connection_serves_the_next_request() -> None:
    app = Streams(chunks=3)
    async with serving(app) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: test\r\n\r\n")
        head = await _read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-type: text/event-stream; charset=utf-8" in head.lower()
        assert b"transfer-encoding: chunked" in head.lower()
        body = b""
        while len(re.findall(rb": (\d+)\n\n", body)) < 3:
            body += await asyncio.wait_for(reader.read(4096), 5)
        assert re.findall(rb": (\d+)\n\n", body) == [b"0", b"1", b"2"]
        app.stop.set()
        body += await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert app.closed == ["done"]

        # The same connection takes another request.
        writer.write(b"GET /b HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await _read_head(reader)).startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)  # `stop` is still set
        writer.close()
    assert app.closed == ["done", "done"]
    assert app.handler_errors == []


async def test_a_client_that_leaves_mid_stream_closes_the_stream_at_once() -> None:
    app = Streams(chunks=1)
    async with serving(app) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        await _read_head(reader)
        assert b": 0" in await asyncio.wait_for(reader.read(4096), 5)
        # The stream now waits for `stop`, which never comes.
        writer.close()
        await _wait_for(lambda: app.closed == ["closed"])
        # The handler returned normally: nobody is left to answer, and nothing to log.
        await asyncio.sleep(0.05)
        assert app.handler_errors == []


async def _never() -> None:
    await asyncio.Event().wait()


async def test_a_cancellation_from_elsewhere_goes_on_when_the_client_leaves_meanwhile() -> None:
    """A shutdown cancels the stream; while its generator cleans up (a wait, as a connection
    is handed back), the client leaves too: the shutdown's cancellation must not be taken
    for the client's and absorbed."""
    left = asyncio.Event()
    cleaning_up = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b": 0\n\n"
            await _never()
        finally:
            cleaning_up.set()
            await asyncio.sleep(0.5)

    task = asyncio.create_task(EventStreamResponse(chunks())({}, receive, send))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    task.cancel()
    await cleaning_up.wait()
    left.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_a_cancellation_inside_send_closes_the_generator() -> None:
    """Cancelled while a slow client's buffer drains: the generator, which may hold a
    subscription, is closed there and then, not left to the garbage collector."""
    closed = asyncio.Event()
    draining = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await _never()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message.get("body"):
            draining.set()
            await _never()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b": 0\n\n"
            yield b": 1\n\n"
        finally:
            closed.set()

    task = asyncio.create_task(EventStreamResponse(chunks())({}, receive, send))  # type: ignore[arg-type]
    await draining.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert closed.is_set()
