"""The model HTTP client: keep-alive, chunked and sized bodies, stale connections, timeouts."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from agentruns.engine.models.base import TextDelta, ToolCall, ToolDefinition
from agentruns.engine.models.openai import OpenAIChatModel
from agentruns.engine.models.transport import ModelHTTPClient
from agentruns.errors import ModelError
from agentruns.testing import fake_openai
from agentruns.testing.server import FakeServer, start_in_thread

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with start_in_thread(fake_openai.create_app()) as server:
        yield server


async def _collect(model: OpenAIChatModel, tools: list[ToolDefinition] | None = None) -> list:
    messages = [{"role": "user", "content": "héllo wörld"}]
    return [e async for e in model.stream(messages, tools or [], {})]


async def test_streams_text_and_tool_calls_over_one_kept_alive_connection(fake: FakeServer) -> None:
    fake.script(
        {"text": "naïve café — ünïcode"},
        {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"q": "x"}}]},
    )
    async with ModelHTTPClient() as client:
        model = OpenAIChatModel("m", base_url=fake.url, api_key="k", client=client)  # type: ignore[arg-type]
        events = await _collect(model)
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "naïve café — ünïcode"
        calls = [
            e
            for e in await _collect(model, [ToolDefinition("lookup", "")])
            if isinstance(e, ToolCall)
        ]
        assert [(c.id, c.name, c.arguments) for c in calls] == [("c1", "lookup", '{"q":"x"}')]
        for _ in range(3):
            await _collect(model)
        assert sum(len(idle) for idle in client._idle.values()) == 1  # one connection, reused
    assert fake.requests()[0]["messages"][0]["content"] == "héllo wörld"


async def test_provider_errors_keep_their_meaning(fake: FakeServer) -> None:
    fake.script({"error": {"status": 429, "message": "slow down", "retry_after": 2}})
    async with ModelHTTPClient() as client:
        model = OpenAIChatModel("m", base_url=fake.url, api_key="k", client=client)  # type: ignore[arg-type]
        with pytest.raises(ModelError) as error:
            await _collect(model)
    assert error.value.retryable and error.value.status_code == 429
    assert error.value.retry_after == 2


async def raw_server(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


async def _request_length(reader: asyncio.StreamReader) -> int:
    """Read a request's head; the length of its body."""
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return length


async def _drain_request(reader: asyncio.StreamReader) -> None:
    await reader.readexactly(await _request_length(reader))


SSE_BODY = (
    'data: {"choices":[{"index":0,"delta":{"content":"é"}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
).encode()


async def test_chunks_split_inside_characters_and_stale_connections() -> None:
    accepted = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await _drain_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        # Split the body, and the two bytes of "é", over several chunks.
        cut = SSE_BODY.index("é".encode()) + 1
        for piece in (SSE_BODY[:cut], SSE_BODY[cut:]):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        # Then close the kept-alive connection, as servers do when idle.
        writer.close()

    server, url = await raw_server(handler)
    async with server, ModelHTTPClient() as client:
        model = OpenAIChatModel("m", base_url=url, api_key="k", client=client)  # type: ignore[arg-type]
        for _ in range(3):
            events = await _collect(model)
            assert [e.text for e in events if isinstance(e, TextDelta)] == ["é"]
            await asyncio.sleep(0.05)
    assert accepted == 3  # each call found the last connection closed and opened a new one


async def test_silence_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _drain_request(reader)
        await asyncio.sleep(5)
        writer.close()

    server, url = await raw_server(handler)
    async with server, ModelHTTPClient() as client:
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", url + "/chat", content=b"{}", timeout=0.2) as response:
                await response.aread()


async def test_silence_mid_body_is_a_read_timeout_but_slow_steady_data_is_not() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _drain_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        # Five pieces 0.1 s apart: 0.5 s in all, longer than the 0.3 s read timeout, but
        # never silent for that long.
        for _ in range(5):
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
        if b"silent" in request_paths[-1]:
            await asyncio.sleep(5)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    request_paths: list[bytes] = []
    server, url = await raw_server(handler)
    async with server, ModelHTTPClient() as client:
        request_paths.append(b"/steady")
        async with client.stream("POST", url + "/steady", content=b"{}", timeout=0.3) as response:
            assert await response.aread() == b"xxxxx"
        request_paths.append(b"/silent")
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream(
                "POST", url + "/silent", content=b"{}", timeout=0.3
            ) as response:
                await response.aread()
        assert asyncio.get_running_loop().time() - started < 2


async def test_sized_body_and_connection_refused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _drain_request(reader)
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 17\r\n\r\n")
        writer.write(b'{"error":"nope"}\n')
        await writer.drain()

    server, url = await raw_server(handler)
    async with (
        server,
        ModelHTTPClient() as client,
        client.stream("POST", url, content=b"{}") as response,
    ):
        assert response.status_code == 401
        assert await response.aread() == b'{"error":"nope"}\n'
    port = server.sockets[0].getsockname()[1] if server.sockets else 1
    async with ModelHTTPClient() as client:
        with pytest.raises(httpx.ConnectError):
            async with client.stream("POST", f"http://127.0.0.1:{port}/", content=b"{}"):
                pass


async def test_header_fields_are_found_in_any_case_and_repeated_ones_joined() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _drain_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRETRY-AFTER: 3\r\n")
        writer.write(b"X-Trace: a\r\nx-trace: b\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server, url = await raw_server(handler)
    async with server, ModelHTTPClient() as client:
        async with client.stream("POST", url, content=b"{}") as response:
            headers = response.headers
            assert headers.get("Retry-After") == headers["retry-after"] == "3"
            assert headers["X-TRACE"] == "a, b"
            assert "content-length" in headers and "content-type" not in headers
            assert headers.get("content-type", "none") == "none"
            assert list(headers) == ["retry-after", "x-trace", "content-length"]
            assert await response.aread() == b"{}"
        model = OpenAIChatModel("m", base_url=url, api_key="k", client=client)  # type: ignore[arg-type]
        with pytest.raises(ModelError) as error:
            await _collect(model)
    assert error.value.status_code == 429 and error.value.retry_after == 3


async def test_large_bodies_both_ways_arrive_whole() -> None:
    # 8 MB up and 4 MB down: more than the socket buffers and the client's read buffer
    # hold, so sending waits for the server to read, and reading pauses the socket.
    up = bytes(range(256)) * (8 * 4096)
    down = bytes(reversed(range(256))) * (4 * 4096)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = await _request_length(reader)
        received = b""
        while len(received) < length:
            received += await reader.read(65536)
            await asyncio.sleep(0)  # a slow reader
        ok = b"same" if received == up else b"diff"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(down) + 4))
        writer.write(ok + down)
        await writer.drain()

    server, url = await raw_server(handler)
    body = b""
    async with (
        server,
        ModelHTTPClient() as client,
        client.stream("POST", url, content=up) as response,
    ):
        async for chunk in response.aiter_bytes():
            body += chunk
            await asyncio.sleep(0.001)  # a slow consumer
    assert body[:4] == b"same" and body[4:] == down


async def test_a_runaway_line_and_a_reset_are_errors_not_hangs() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        await _drain_request(reader)
        if b"/long" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nX-Long: " + b"x" * 200_000 + b"\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            await writer.drain()
            writer.transport.abort()  # a reset mid-chunk
        await writer.drain()

    server, url = await raw_server(handler)
    async with server, ModelHTTPClient() as client:
        with pytest.raises(httpx.RemoteProtocolError, match="longer than"):
            async with client.stream("POST", url + "/long", content=b"{}"):
                pass
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async with client.stream("POST", url + "/reset", content=b"{}") as response:
                await response.aread()


async def test_a_connection_is_reused_only_after_a_body_that_ended_cleanly() -> None:
    accepted = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        while True:
            request = await reader.readline()
            if not request:
                return
            await _drain_request(reader)
            if b"/extra" in request:  # two bytes more than it said: not reusable
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokXX")
            elif b"/badchunk" in request:  # a chunk longer than its size line
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"2\r\nokXX\r\n0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"2\r\nok\r\n0\r\nX-Trailer: t\r\n\r\n")
            await writer.drain()

    server, url = await raw_server(handler)
    async with server, ModelHTTPClient() as client:
        for path in ("/a", "/b", "/extra", "/c"):
            async with client.stream("POST", url + path, content=b"{}") as response:
                assert await response.aread() == b"ok"
        # The trailers were read and the connection reused; the extra bytes closed it.
        assert accepted == 2
        with pytest.raises(httpx.RemoteProtocolError, match="longer than its size"):
            async with client.stream("POST", url + "/badchunk", content=b"{}") as response:
                await response.aread()


async def test_https_with_a_verified_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority = trustme.CA()
    cert = authority.issue_cert("localhost")
    trusted = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(trusted))
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(served)
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted))  # the client trusts this one authority

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _drain_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"6\r\nsecret\r\n0\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=served)
    port = server.sockets[0].getsockname()[1]
    async with (
        server,
        ModelHTTPClient() as client,
        client.stream("POST", f"https://localhost:{port}/v1", content=b"{}") as response,
    ):
        assert response.status_code == 200
        assert await response.aread() == b"secret"
