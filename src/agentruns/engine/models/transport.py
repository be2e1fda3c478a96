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
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["ModelClient", "ModelHTTPClient", "ResponseHeaders", "StreamedResponse"]

Origin = tuple[str, str, int]  # scheme, host, port


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


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
            self._conn.writer.transport.abort()  # the waiting read then sees the end
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
        reader = self._conn.reader
        keep_alive = self.headers.get("connection", "").lower() != "close"
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await self._read(reader.readline())
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise httpx.RemoteProtocolError(f"bad chunk size {size_line!r}") from exc
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while (await self._read(reader.readline())).strip():
                        pass
                    break
                chunk = await self._read(reader.readexactly(size + 2))
                yield chunk[:-2]
            self.reusable = keep_alive
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            while remaining > 0:
                chunk = await self._read(reader.read(min(remaining, 65536)))
                if not chunk:
                    raise httpx.RemoteProtocolError("the server closed the connection mid-body")
                remaining -= len(chunk)
                yield chunk
            self.reusable = keep_alive
        else:
            while chunk := await self._read(reader.read(65536)):
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
            ) as response:
                yield response
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
                conn.writer.write(request)
                await conn.writer.drain()
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
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return _Connection(reader, writer)


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
    reader = conn.reader
    try:
        async with asyncio.timeout(read_timeout):
            status_line = await reader.readline()
            if not status_line:
                raise httpx.RemoteProtocolError("the server closed the connection")
            fields: list[tuple[bytes, bytes]] = []
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
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
