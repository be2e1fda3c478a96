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
import codecs
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
    """One connection: what arrives is buffered here, and read back as lines or sizes.

    In place of asyncio's streams (a reader, a writer and a protocol, each with a dict of
    attributes): about 1.5 KB less for each of the thousands of calls that can be open.
    What was received is read before a broken connection's error is raised; at the end
    of the stream, `readline` returns what is left and then b"", `readexactly` raises
    `IncompleteReadError`, `read` returns b"".
    """

    __slots__ = ("_buffer", "_drained", "_eof", "_error", "_paused", "_waiter", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None  # while the send buffer is full
        self._eof = False
        self._error: Exception | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop calls this only after `create_connection` has returned (and its
        # transports are not `asyncio.Transport` subclasses): `_connect` sets it first.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _HIGH_WATER and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # HTTP/1.1 has no half-closed connections: close ours too

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _more(self) -> None:
        """Wait for more data or the end; raise if the connection broke."""
        if self._eof:
            if self._error is not None:
                raise self._error
            return
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def readline(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > _MAX_LINE:
                raise httpx.RemoteProtocolError(f"a line longer than {_MAX_LINE} bytes")
            if self._eof:
                await self._more()
                return self._take(len(self._buffer))
            await self._more()
        return self._take(end + 1)

    async def readexactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if self._eof:
                await self._more()
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), size)
            await self._more()
        return self._take(size)

    async def read(self, size: int) -> bytes:
        while not self._buffer:
            if self._eof:
                await self._more()
                return b""
            await self._more()
        return self._take(min(size, len(self._buffer)))

    async def send(self, data: bytes) -> None:
        if self._eof or self.transport is None:
            raise ConnectionResetError("the server closed the connection")
        self.transport.write(data)
        if self._drained is not None:
            await self._drained
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ResponseHeaders(Mapping[str, str]):
    """A response's header fields as received, looked up by name in any case.

    Lighter than `httpx.Headers`, which copies and lowercases every field up front: a
    response can stay open for minutes, and thousands can be open at once.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self._fields = fields

    def __getitem__(self, name: str) -> str:
        wanted = name.lower().encode("latin-1")
        values = [value for key, value in self._fields if key.lower() == wanted]
        if not values:
            raise KeyError(name)
        return b", ".join(values).decode("latin-1")

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(key.decode("latin-1").lower() for key, _ in self._fields))

    def __len__(self) -> int:
        return len({key.lower() for key, _ in self._fields})


class StreamedResponse:
    """The status, headers and body stream of one response."""

    def __init__(
        self, status_code: int, headers: ResponseHeaders, conn: _Connection, read_timeout: float
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self._conn = conn
        self._timeout = read_timeout
        self.reusable = False
        self._consumed = False
        self._loop = asyncio.get_running_loop()
        self._read_started: float | None = None  # while a read waits
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False

    def _watch(self) -> None:
        # One timer per response instead of one per read: most reads find their data
        # already buffered, and arming a timeout for each cost more than the read itself.
        started, now = self._read_started, self._loop.time()
        if started is not None and now - started >= self._timeout:
            self._timed_out = True
            self._conn.abort()  # the waiting read then sees the end
            return
        wait = self._timeout if started is None else started + self._timeout - now
        self._watchdog = self._loop.call_later(wait, self._watch)

    def close_watch(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _read(self, reading: Any) -> bytes:
        if self._watchdog is None:
            self._watch()
        self._read_started = self._loop.time()
        try:
            data: bytes = await reading
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            # The watchdog aborts the connection, so a timeout shows up as a broken read.
            if self._timed_out:
                raise self._timeout_error() from exc
            if isinstance(exc, asyncio.IncompleteReadError):
                closed = "the server closed the connection mid-body"
                raise httpx.RemoteProtocolError(closed) from exc
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        finally:
            self._read_started = None
        if self._timed_out:
            raise self._timeout_error()
        return data

    def _timeout_error(self) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(f"no data for {self._timeout:g} s")

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        if self._consumed:
            return
        self._consumed = True
        conn = self._conn
        keep_alive = self.headers.get("connection", "").lower() != "close"
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await self._read(conn.readline())
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise httpx.RemoteProtocolError(f"bad chunk size {size_line!r}") from exc
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while (await self._read(conn.readline())).strip():
                        pass
                    break
                chunk = await self._read(conn.readexactly(size + 2))
                yield chunk[:-2]
            self.reusable = keep_alive
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            while remaining > 0:
                chunk = await self._read(conn.read(min(remaining, 65536)))
                if not chunk:
                    raise httpx.RemoteProtocolError("the server closed the connection mid-body")
                remaining -= len(chunk)
                yield chunk
            self.reusable = keep_alive
        else:
            while chunk := await self._read(conn.read(65536)):
                yield chunk

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aiter_lines(self) -> AsyncIterator[str]:
        """Lines without their ending (\n or \r\n); UTF-8 split across chunks is kept whole."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        async for chunk in self.aiter_bytes():
            lines = (pending + decoder.decode(chunk)).split("\n")
            pending = lines.pop()
            for line in lines:
                yield line.removesuffix("\r")
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending.removesuffix("\r")


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
        self._ssl: ssl.SSLContext | None = None
        self._proxies = urllib.request.getproxies()
        self._fallback: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ModelHTTPClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
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

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        content: bytes = b"",
        headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout = 300.0,  # noqa: ASYNC109 (the httpx signature)
    ) -> AsyncIterator[Any]:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        if self._proxied(scheme, host):
            self._fallback = self._fallback or httpx.AsyncClient()
            async with self._fallback.stream(
                method, url, content=content, headers=headers, timeout=timeout
            ) as proxied:
                yield proxied
            return
        read_timeout = timeout.read if isinstance(timeout, httpx.Timeout) else timeout
        origin = (scheme, host, parts.port or (443 if scheme == "https" else 80))
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        request = _request_head(method, target, parts.netloc, content, headers or {}) + content
        # A response may stream for minutes: don't hold the request meanwhile (orjson's
        # bodies keep a 4 KB buffer, which at thousands of calls in flight adds up).
        del content
        async with self._slots:
            conn, response = await self._send(origin, request, read_timeout or 300.0)
            del request
            try:
                yield response
                if not response._consumed:
                    await response.aread()
            except BaseException:
                conn.close()
                raise
            finally:
                response.close_watch()
            if response.reusable and len(self._idle[origin]) < self._max_idle:
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
            try:
                await conn.send(request)
                return conn, await _read_head(conn, read_timeout)
            except (httpx.RemoteProtocolError, httpx.ReadError, ConnectionError) as exc:
                conn.close()
                if not reused:
                    if isinstance(exc, httpx.TransportError):
                        raise
                    raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
            except BaseException:
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


async def _read_head(conn: _Connection, read_timeout: float) -> StreamedResponse:
    try:
        async with asyncio.timeout(read_timeout):
            status_line = await conn.readline()
            if not status_line:
                raise httpx.RemoteProtocolError("the server closed the connection")
            fields: list[tuple[bytes, bytes]] = []
            while (line := await conn.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                fields.append((name.strip(), value.strip()))
    except TimeoutError as exc:
        raise httpx.ReadTimeout(f"no response for {read_timeout:g} s") from exc
    try:
        status = int(status_line.split(None, 2)[1])
    except (IndexError, ValueError) as exc:
        raise httpx.RemoteProtocolError(f"bad status line {status_line[:100]!r}") from exc
    return StreamedResponse(status, ResponseHeaders(fields), conn, read_timeout)


# What model adapters accept: ours, or any httpx client (tests use httpx's mock transport).
ModelClient = httpx.AsyncClient | ModelHTTPClient
