"""A small HTTP/1.1 client for streamed model calls.

Model calls are the one hot HTTP path of a worker: thousands of short streamed
POSTs to a handful of origins. A general client spends more CPU per call on
pooling and abstraction layers than on the call itself (about half of a run's
orchestration cost, measured in docs/benchmarks.md), so the adapters talk
through this instead: keep-alive connections per origin, Content-Length and
chunked bodies, TLS, timeouts. It speaks the subset of `httpx.AsyncClient`
the adapters use (`stream()`, and responses with `status_code`, `headers`,
`aread()`, `aiter_lines()`) and raises httpx's exception types, so adapters
and their error mapping work with either. When the environment sets a proxy
for the origin, calls go through httpx, which implements proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httpx

__all__ = ["ModelClient", "ModelHTTPClient", "ResponseHeaders", "StreamedResponse"]

Origin = tuple[str, str, int]  # scheme, host, port


# Bytes received but not yet read, past which the socket is no longer read from.
_HIGH_WATER = 256 * 1024
_MAX_LINE = 64 * 1024


class _Connection(asyncio.Protocol):
    """One connection: what arrives is buffered here for the response to parse.

    In place of asyncio's streams (a reader, a writer and a protocol, each with a dict of
    attributes): about 1.5 KB less for each of the thousands of calls that can be open.
    A reader parses what `buffer` holds and, when it needs more, awaits `more()`; what
    was received is read before a broken connection's error is raised.
    """

    __slots__ = (
        "_drained",
        "_paused",
        "_waiter",
        "buffer",
        "eof",
        "error",
        "read_timeout",
        "timed_out",
        "transport",
        "waiting_since",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: Exception | None = None
        # Set while a read waits; `_ReadDeadlines` aborts a connection silent for too long.
        self.waiting_since: float | None = None
        self.read_timeout = 300.0
        self.timed_out = False
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None  # while the send buffer is full
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop calls this only after `create_connection` has returned (and its
        # transports are not `asyncio.Transport` subclasses): `_connect` sets it first.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # HTTP/1.1 has no half-closed connections: close ours too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        self.waiting_since = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def more(self) -> asyncio.Future[None]:
        """Done when more data arrives or the connection ends (check `eof` first).

        A future rather than a coroutine: a call waiting for its model holds no frame here.
        """
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        loop = asyncio.get_running_loop()
        self.waiting_since = loop.time()
        self._waiter = loop.create_future()
        return self._waiter

    def ended_error(self, mid_body: bool) -> httpx.TransportError:
        """Why a read found the connection at its end."""
        if self.timed_out:
            return httpx.ReadTimeout(f"no data for {self.read_timeout:g} s")
        if self.error is not None:
            return httpx.ReadError(str(self.error) or type(self.error).__name__)
        if mid_body:
            return httpx.RemoteProtocolError("the server closed the connection mid-body")
        return httpx.RemoteProtocolError("the server closed the connection")

    def take_line(self) -> bytes | None:
        """A whole line from the buffer, with its ending; None until one has arrived."""
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > _MAX_LINE:
                raise httpx.RemoteProtocolError(f"a line longer than {_MAX_LINE} bytes")
            return None
        return self.take(end + 1)

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def readline(self) -> bytes:
        """The next line, or raise at the end of the connection."""
        while (line := self.take_line()) is None:
            if self.eof:
                raise self.ended_error(mid_body=False)
            await self.more()
        return line

    async def send(self, data: bytes) -> None:
        if self.eof or self.transport is None:
            raise ConnectionResetError("the server closed the connection")
        self.transport.write(data)
        if self._drained is not None:
            await self._drained
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _ReadDeadlines:
    """Aborts connections whose read has waited longer than their read timeout.

    One task sweeping the busy connections a few times per timeout, instead of a timer
    per response: a timer (handle, libuv timer, context, bound method) weighs about
    0.7 KB, times thousands of calls waiting for their first token.
    """

    def __init__(self) -> None:
        self.busy: set[_Connection] = set()
        self._tick = 1.0
        self._task: asyncio.Task[None] | None = None

    def watch(self, conn: _Connection, read_timeout: float) -> None:
        conn.read_timeout = read_timeout
        conn.timed_out = False
        self.busy.add(conn)
        # A few sweeps per timeout, so that a read times out at most a quarter late.
        self._tick = max(0.01, min(self._tick, read_timeout / 4))
        if self._task is None:
            self._task = asyncio.create_task(self._sweep())

    def unwatch(self, conn: _Connection) -> None:
        conn.waiting_since = None
        self.busy.discard(conn)

    async def _sweep(self) -> None:
        try:
            while self.busy:
                await asyncio.sleep(self._tick)
                now = asyncio.get_running_loop().time()
                silent = [
                    conn
                    for conn in self.busy
                    if conn.waiting_since is not None
                    and now - conn.waiting_since >= conn.read_timeout
                ]
                for conn in silent:
                    conn.timed_out = True
                    conn.abort()  # the waiting read then finds the end
        finally:
            self._task = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class ResponseHeaders(Mapping[str, str]):
    """A response's header fields as received, looked up by name in any case.

    Kept as the received bytes and parsed on lookup, which is rare (the content type,
    `retry-after` on errors): a response can stay open for minutes, and thousands can be
    open at once.
    """

    __slots__ = ("_block",)

    def __init__(self, block: bytes) -> None:
        self._block = block

    def fields(self) -> Iterator[tuple[bytes, bytes]]:
        for line in self._block.split(b"\n"):
            name, colon, value = line.partition(b":")
            if colon:
                yield name.strip(), value.strip()

    def __getitem__(self, name: str) -> str:
        wanted = name.lower().encode("latin-1")
        values = [value for key, value in self.fields() if key.lower() == wanted]
        if not values:
            raise KeyError(name)
        return b", ".join(values).decode("latin-1")

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(key.decode("latin-1").lower() for key, _ in self.fields()))

    def __len__(self) -> int:
        return len({key.lower() for key, _ in self.fields()})


# How a body's end is known: by its chunks, by its size, or by the connection closing.
_CHUNKED, _SIZED, _UNTIL_CLOSE = 0, 1, 2


class StreamedResponse:
    """The status, headers and body stream of one response.

    The body is parsed straight from the connection's buffer (`_body`, no awaits), so
    that a call waiting for data holds one generator and a future, not a stack of
    coroutines.
    """

    __slots__ = (
        "_conn",
        "_consumed",
        "_ended",
        "_framing",
        "_in_trailers",
        "_keep_alive",
        "_left",
        "headers",
        "reusable",
        "status_code",
    )

    def __init__(self, status_code: int, headers: ResponseHeaders, conn: _Connection) -> None:
        self.status_code = status_code
        self.headers = headers
        self.reusable = False
        self._conn = conn
        self._consumed = False
        self._ended = False
        self._in_trailers = False
        self._keep_alive = True
        self._framing, self._left = _UNTIL_CLOSE, 0
        for name, value in headers.fields():  # one pass, not a lookup per field
            name = name.lower()
            if name == b"connection":
                self._keep_alive = value.lower() != b"close"
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._framing, self._left = _CHUNKED, 0  # data left in the chunk; -1: CRLF
            elif name == b"content-length" and self._framing != _CHUNKED:
                try:
                    self._framing, self._left = _SIZED, int(value)
                except ValueError as exc:
                    raise httpx.RemoteProtocolError(f"bad Content-Length {value!r}") from exc

    def _body(self) -> bytes | None:
        """The body bytes received and not yet read (b"" for none yet); None at its end."""
        if self._ended:
            return None
        conn = self._conn
        buffer = conn.buffer
        if self._framing == _SIZED:
            data = conn.take(min(self._left, len(buffer)))
            self._left -= len(data)
            if self._left == 0:
                self._end()
            return data or (None if self._ended else b"")
        if self._framing == _UNTIL_CLOSE:
            data = conn.take(len(buffer))
            if not data and conn.eof:
                if conn.timed_out or conn.error is not None:
                    raise conn.ended_error(mid_body=False)
                self._ended = True
                return None
            return data
        parts: list[bytes] = []
        while not self._ended:
            if self._left > 0:
                if not buffer:
                    break
                part = conn.take(min(self._left, len(buffer)))
                self._left -= len(part)
                parts.append(part)
                if self._left == 0:
                    self._left = -1
                continue
            line = conn.take_line()
            if line is None:
                break
            if self._left == -1:  # the line ending after a chunk's data
                if line.strip():
                    raise httpx.RemoteProtocolError("a chunk longer than its size")
                self._left = 0
            elif self._in_trailers:
                if not line.strip():
                    self._end()
            else:
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise httpx.RemoteProtocolError(f"bad chunk size {line[:100]!r}") from exc
                if size == 0:
                    self._in_trailers = True  # trailers, if any, end with an empty line
                else:
                    self._left = size
        if parts:
            return b"".join(parts)
        return None if self._ended else b""

    def _end(self) -> None:
        self._ended = True
        # Bytes past the end would be taken for the next response's: don't reuse then.
        self.reusable = self._keep_alive and not self._conn.buffer

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        if self._consumed:
            return
        self._consumed = True
        conn = self._conn
        while (data := self._body()) is not None:
            if data:
                yield data
            elif conn.eof:
                raise conn.ended_error(mid_body=True)
            else:
                await conn.more()

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aiter_lines(self) -> AsyncIterator[str]:
        """Lines without their ending (\n or \r\n), each decoded from UTF-8 on its own.

        Split as bytes (a newline byte is never part of a multi-byte character, so one split
        across chunks stays whole) and decoded a line at a time: while the caller is busy
        with one line, only the rest of the body is held, once, as received. A whole reply
        often arrives at once, and thousands of runs can each be part-way through one.
        """
        if self._consumed:
            return
        self._consumed = True
        conn = self._conn
        pending = b""  # received, not yet a whole line
        while (data := self._body()) is not None:
            if data:
                pending = pending + data if pending else data
                del data
                start = 0
                while (end := pending.find(b"\n", start)) >= 0:
                    yield pending[start:end].decode("utf-8", "replace").removesuffix("\r")
                    start = end + 1
                pending = pending[start:]
            elif conn.eof:
                raise conn.ended_error(mid_body=True)
            else:
                await conn.more()
        if pending:
            yield pending.decode("utf-8", "replace").removesuffix("\r")


class _Exchange:
    """One request and its response: `async with client.stream(...) as response`.

    A class rather than an `asynccontextmanager` generator, which would be one more
    suspended frame per call in flight.
    """

    __slots__ = ("_client", "_conn", "_fallback", "_origin", "_request", "_response", "_timeout")

    def __init__(
        self,
        client: ModelHTTPClient,
        origin: Origin | None,
        request: bytes,
        read_timeout: float,
        fallback: contextlib.AbstractAsyncContextManager[httpx.Response] | None = None,
    ) -> None:
        self._client = client
        self._origin = origin
        self._request = request
        self._timeout = read_timeout
        self._fallback = fallback
        self._conn: _Connection | None = None
        self._response: StreamedResponse | None = None

    async def __aenter__(self) -> Any:
        if self._fallback is not None:
            return await self._fallback.__aenter__()
        assert self._origin is not None
        await self._client._slots.acquire()
        try:
            request, self._request = self._request, b""
            self._conn, self._response = await self._client._send(
                self._origin, request, self._timeout
            )
        except BaseException:
            self._client._slots.release()
            raise
        return self._response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if self._fallback is not None:
            await self._fallback.__aexit__(exc_type, exc, tb)
            return
        conn, response, client = self._conn, self._response, self._client
        assert conn is not None and response is not None and self._origin is not None
        try:
            if exc is None and not response._consumed:
                await response.aread()
        except BaseException:
            client._release(conn, self._origin, reusable=False)
            raise
        client._release(conn, self._origin, reusable=exc is None and response.reusable)


class ModelHTTPClient:
    """Keep-alive HTTP/1.1 connections per origin, for streamed JSON POSTs."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 10.0,
        max_connections: int = 2048,
        max_idle_per_origin: int = 256,
    ) -> None:
        self._connect_timeout = connect_timeout_s
        self._idle: dict[Origin, list[_Connection]] = defaultdict(list)
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle_per_origin
        self._deadlines = _ReadDeadlines()
        self._ssl: ssl.SSLContext | None = None
        self._proxies = urllib.request.getproxies()
        self._fallback: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ModelHTTPClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._deadlines.close()
        for connections in self._idle.values():
            for conn in connections:
                conn.close()
        self._idle.clear()
        if self._fallback is not None:
            await self._fallback.aclose()

    def _proxied(self, scheme: str, host: str) -> bool:
        return bool(self._proxies.get(scheme) or self._proxies.get("all")) and not (
            urllib.request.proxy_bypass(host)
        )

    def stream(
        self,
        method: str,
        url: str,
        *,
        content: bytes = b"",
        headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout = 300.0,
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        if self._proxied(scheme, host):
            self._fallback = self._fallback or httpx.AsyncClient()
            proxied = self._fallback.stream(
                method, url, content=content, headers=headers, timeout=timeout
            )
            return _Exchange(self, None, b"", 0.0, fallback=proxied)
        read_timeout = timeout.read if isinstance(timeout, httpx.Timeout) else timeout
        origin = (scheme, host, parts.port or (443 if scheme == "https" else 80))
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        # The exchange keeps only the encoded request, and lets go of it once sent: a
        # response may stream for minutes, and orjson's bodies keep a 4 KB buffer.
        request = _request_head(method, target, parts.netloc, content, headers or {}) + content
        return _Exchange(self, origin, request, read_timeout or 300.0)

    def _release(self, conn: _Connection, origin: Origin, *, reusable: bool) -> None:
        self._deadlines.unwatch(conn)
        self._slots.release()
        if reusable and len(self._idle[origin]) < self._max_idle:
            self._idle[origin].append(conn)
        else:
            conn.close()

    async def _send(
        self, origin: Origin, request: bytes, read_timeout: float
    ) -> tuple[_Connection, StreamedResponse]:
        # A kept-alive connection the server has since closed fails on first use; then a
        # fresh one is tried (a POST is only retried when nothing of a response was read).
        while True:
            reused = bool(self._idle[origin])
            conn = self._idle[origin].pop() if reused else await self._connect(origin)
            self._deadlines.watch(conn, read_timeout)
            try:
                await conn.send(request)
                return conn, await _read_head(conn)
            except (httpx.RemoteProtocolError, httpx.ReadError, ConnectionError) as exc:
                self._deadlines.unwatch(conn)
                conn.close()
                if not reused:
                    if isinstance(exc, httpx.TransportError):
                        raise
                    raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
            except BaseException:
                self._deadlines.unwatch(conn)
                conn.close()
                raise

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            self._ssl = self._ssl or ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, conn = await asyncio.get_running_loop().create_connection(
                    _Connection, host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        conn.transport = cast(asyncio.Transport, transport)
        return conn


def _request_head(
    method: str, target: str, netloc: str, content: bytes, headers: Mapping[str, str]
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {netloc}"]
    lower = {name.lower() for name in headers}
    if "content-type" not in lower and content:
        lines.append("Content-Type: application/json")
    if "accept" not in lower:
        lines.append("Accept: */*")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    lines.append(f"Content-Length: {len(content)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(conn: _Connection) -> StreamedResponse:
    try:
        status_line = await conn.readline()
        head = bytearray()
        while (line := await conn.readline()) not in (b"\r\n", b"\n"):
            head += line
    except httpx.ReadTimeout as exc:
        raise httpx.ReadTimeout(f"no response for {conn.read_timeout:g} s") from exc
    try:
        status = int(status_line.split(None, 2)[1])
    except (IndexError, ValueError) as exc:
        raise httpx.RemoteProtocolError(f"bad status line {status_line[:100]!r}") from exc
    return StreamedResponse(status, ResponseHeaders(bytes(head)), conn)


# What model adapters accept: ours, or any httpx client (tests use httpx's mock transport).
ModelClient = httpx.AsyncClient | ModelHTTPClient
