"""The server's HTTP protocol lets a connection go as soon as it ends, even with a reset."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import weakref
from typing import Any

from agentruns.api.http_protocol import HTTPProtocol
from integration.on_both_loops.uvicorn_server import serving


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_connection_reset_after_a_response_is_let_go_at_once() -> None:
    async with serving(app, timeout_keep_alive=65) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(2) == b"ok"
        (protocol,) = server.server_state.connections
        assert isinstance(protocol, HTTPProtocol)
        held = weakref.ref(protocol)
        del protocol

        # Close with a reset, as a client does that closes with data unread.
        raw = writer.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        for _ in range(100):
            await asyncio.sleep(0.01)
            gc.collect()
            if held() is None:
                break
        # uvicorn's own protocol stays alive here for the 65 s keep-alive timeout.
        assert held() is None
