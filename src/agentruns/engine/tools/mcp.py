"""MCP servers as tools, through the official `mcp` SDK's client sessions (stdio, streamable HTTP).

A worker keeps one session per (project, server spec) alive across runs and
starts it again when it died. Each session is owned by a background task,
because the SDK's transports are anyio context managers that must be entered
and left by the same task; runs only send requests through it.

The SDK (with httpx2 and mcp_types) is imported when the first session starts, not with
this module: it adds about 25 MB to a process, and many servers never start an MCP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from agentruns.engine.models.base import ToolDefinition
from agentruns.engine.tools.arguments import check_schema
from agentruns.engine.tools.secrets import ResolvedSecrets
from agentruns.engine.tools.specs import McpServerSpec
from agentruns.errors import ToolError
from agentruns.netguard import HostNotFound, UnsafeURL, resolve_public

if TYPE_CHECKING:
    import mcp_types
    from mcp import ClientSession

log = logging.getLogger(__name__)

# A session unused for this long is pinged before a call: a server that died while idle
# is restarted before the call is sent, not reported as a failed call.
PING_AFTER_IDLE_S = 5.0
PING_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


class McpServerUnavailable(ToolError):
    """An MCP server could not be started or reached; the message names it."""


class _ConnectionLost(Exception):
    """The session ended while a request was in flight: its outcome is unknown."""


@dataclass(frozen=True, slots=True)
class McpToolInfo:
    """A tool an MCP server lists, as the model will see it."""

    name: str  # the server's own name for it
    exposed_name: str  # prefixed, made safe for model APIs
    definition: ToolDefinition
    idempotent: bool


def exposed_tool_name(prefix: str, name: str) -> str:
    """`prefix + name`, with characters model APIs refuse replaced, at most 64 long."""
    return _UNSAFE_NAME_CHARS.sub("_", prefix + name)[:64]


def describe_error(exc: BaseException) -> str:
    """The innermost, most telling part of an error (anyio wraps them in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    try:
        from mcp.shared.exceptions import MCPError
    except ImportError:  # the SDK itself failed to load: describe that error plainly
        pass
    else:
        if isinstance(exc, MCPError):
            return exc.message
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def result_text(result: mcp_types.CallToolResult) -> str:
    """What the model sees of a tool result: its text, with other content named."""
    import mcp_types

    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[binary resource {resource.uri} omitted]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link: {block.uri}]")
        else:
            parts.append(f"[{getattr(block, 'type', 'non-text')} content omitted]")
    if not parts and result.structured_content is not None:
        parts.append(orjson.dumps(result.structured_content).decode())
    return "\n".join(parts)


@dataclass
class McpConnection:
    """One live session with one MCP server."""

    label: str
    spec: McpServerSpec
    env: dict[str, str]
    headers: dict[str, str]
    secrets: ResolvedSecrets
    session: ClientSession | None = None
    tools: list[mcp_types.Tool] = field(default_factory=list)
    alive: bool = False
    last_used: float = 0.0
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, timeout_s: float) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._own(ready), name=f"mcp-{self.spec.name}")
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(ready)
        except BaseException as exc:
            ready.cancel()  # the owner task must not report to a caller that left
            await self.close()
            if isinstance(exc, TimeoutError):
                raise McpServerUnavailable(
                    f"MCP server {self.label} did not start within {timeout_s:g} s"
                ) from None
            if isinstance(exc, Exception):
                raise McpServerUnavailable(
                    f"MCP server {self.label} could not start: {self._explain(exc)}"
                ) from None
            raise
        self.alive = True
        self.last_used = asyncio.get_running_loop().time()

    def _explain(self, exc: BaseException) -> str:
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        if isinstance(exc, FileNotFoundError) and self.spec.transport == "stdio":
            return f"command {self.spec.command!r} not found"
        return self.secrets.redact(describe_error(exc))

    async def _own(self, ready: asyncio.Future[None]) -> None:
        try:
            # The first session loads the SDK: in a thread, so that the other runs' streams
            # do not stall for the few hundred milliseconds it takes.
            await asyncio.to_thread(_import_sdk)
            import httpx2
            from mcp import ClientSession, StdioServerParameters, stdio_client
            from mcp.client.streamable_http import streamable_http_client

            async with contextlib.AsyncExitStack() as stack:
                if self.spec.transport == "stdio":
                    assert self.spec.command is not None
                    params = StdioServerParameters(
                        command=self.spec.command, args=self.spec.args, env=self.env or None
                    )
                    read, write = await stack.enter_async_context(stdio_client(params))
                else:
                    assert self.spec.url is not None
                    client = httpx2.AsyncClient(
                        headers=self.headers, timeout=httpx2.Timeout(30.0, read=300.0)
                    )
                    await stack.enter_async_context(client)
                    read, write = await stack.enter_async_context(
                        streamable_http_client(self.spec.url, http_client=client)
                    )
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                self.tools = await _list_all_tools(session)
                self.session = session
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("MCP server %s stopped: %s", self.label, describe_error(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.alive = False
            self.session = None

    async def ping(self) -> bool:
        if not self.alive or self.session is None:
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self.session.send_ping()
        except Exception:
            return False
        return True

    async def call(self, name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        import mcp_types
        from mcp.shared.exceptions import MCPError
        from mcp_types.jsonrpc import CONNECTION_CLOSED

        session = self.session
        if not self.alive or session is None:
            raise _ConnectionLost
        self.last_used = asyncio.get_running_loop().time()
        try:
            result = await session.call_tool(name, arguments)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, MCPError) and exc.code != CONNECTION_CLOSED:
                message = f"MCP error {exc.code}: {exc.message}"
                raise ToolError(self.secrets.redact(message)) from exc
            # CONNECTION_CLOSED is also a code servers send for their own errors, and other
            # exceptions may or may not mean the transport is gone: a ping tells them apart.
            if await self.ping():
                raise ToolError(self.secrets.redact(describe_error(exc))) from exc
            self._lost()
            raise _ConnectionLost from exc
        finally:
            self.last_used = asyncio.get_running_loop().time()
        if not isinstance(result, mcp_types.CallToolResult):
            raise ToolError(f"MCP server {self.label} answered {type(result).__name__}")
        return result

    def _lost(self) -> None:
        # Let the owner task leave the transport, which reaps a stdio server's process.
        self.alive = False
        self._stop.set()

    async def close(self) -> None:
        self.alive = False
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        except BaseException:
            pass


def _import_sdk() -> None:
    import mcp.client.streamable_http  # noqa: F401  (imports the rest of the SDK too)


async def _list_all_tools(session: ClientSession) -> list[mcp_types.Tool]:
    import mcp_types

    listing = await session.list_tools()
    tools = list(listing.tools)
    pages = 0
    while listing.next_cursor and pages < 50:
        listing = await session.list_tools(
            params=mcp_types.PaginatedRequestParams(cursor=listing.next_cursor)
        )
        tools.extend(listing.tools)
        pages += 1
    return tools


class McpSessions:
    """The MCP sessions of one worker: kept across runs, restarted when they die."""

    def __init__(self, *, start_timeout_s: float = 30.0, idle_timeout_s: float = 600.0) -> None:
        self.start_timeout_s = start_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._connections: dict[tuple[str, str], McpConnection] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def connection(
        self,
        owner: str,
        spec: McpServerSpec,
        *,
        secrets_allowed: tuple[str, ...] | None,
        allow_private: bool,
    ) -> McpConnection:
        """A live session with the server of `spec` for `owner` (a project), started if need be.

        Sessions are per project: a stateful server (memory, files) must not carry one
        tenant's data into another tenant's runs.
        """
        key = (owner, spec.model_dump_json())
        await self._close_idle(keep=key)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            current = self._connections.get(key)
            if current is not None and current.alive:
                idle = asyncio.get_running_loop().time() - current.last_used
                if idle < PING_AFTER_IDLE_S or await current.ping():
                    return current
                log.warning("MCP server %s stopped answering; restarting it", current.label)
            if current is not None:
                await current.close()
                self._connections.pop(key, None)
            connection = await self._start(spec, secrets_allowed, allow_private)
            self._connections[key] = connection
            return connection

    async def _start(
        self, spec: McpServerSpec, secrets_allowed: tuple[str, ...] | None, allow_private: bool
    ) -> McpConnection:
        label = repr(spec.name)
        secrets = ResolvedSecrets(secrets_allowed)
        try:
            env = secrets.resolve_map(spec.env)
            headers = secrets.resolve_map(spec.headers)
        except ToolError as exc:
            raise McpServerUnavailable(f"MCP server {label}: {exc}") from None
        if spec.url is not None:
            try:
                await resolve_public(spec.url, allow_private=allow_private)
            except (UnsafeURL, HostNotFound) as exc:
                raise McpServerUnavailable(f"MCP server {label}: {exc}") from None
        connection = McpConnection(label, spec, env, headers, secrets)
        await connection.start(self.start_timeout_s)
        log.info("MCP server %s started (%d tools)", label, len(connection.tools))
        return connection

    async def _close_idle(self, keep: tuple[str, str]) -> None:
        now = asyncio.get_running_loop().time()
        for key, connection in list(self._connections.items()):
            if key != keep and now - connection.last_used > self.idle_timeout_s:
                lock = self._locks.get(key)
                if lock is not None and lock.locked():
                    continue
                self._connections.pop(key, None)
                self._locks.pop(key, None)
                log.info("MCP server %s unused for a while; stopping it", connection.label)
                # In the background: a slow shutdown must not hold up the run asking.
                task = asyncio.create_task(connection.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(
            *(c.close() for c in connections), *self._closing, return_exceptions=True
        )


class McpTool:
    """One tool of an MCP server, as a server-side tool of a run."""

    def __init__(
        self,
        sessions: McpSessions,
        owner: str,
        spec: McpServerSpec,
        info: McpToolInfo,
        *,
        secrets_allowed: tuple[str, ...] | None,
        allow_private: bool,
    ) -> None:
        self.sessions = sessions
        self.owner = owner
        self.spec = spec
        self.info = info
        self.secrets_allowed = secrets_allowed
        self.allow_private = allow_private
        self.definition = info.definition
        self.idempotent = info.idempotent
        self.timeout_s = spec.timeout_s

    async def _connection(self) -> McpConnection:
        return await self.sessions.connection(
            self.owner,
            self.spec,
            secrets_allowed=self.secrets_allowed,
            allow_private=self.allow_private,
        )

    async def call(self, arguments: dict[str, Any]) -> str:
        connection = await self._connection()
        try:
            result = await connection.call(self.info.name, arguments)
        except _ConnectionLost:
            log.warning("MCP server %s stopped during a call", connection.label)
            if not self.idempotent:
                raise ToolError(
                    f"the MCP server {connection.label} stopped during the call, so its outcome "
                    "is unknown; it is restarted for the next call"
                ) from None
            # Safe to repeat: once, on a fresh session.
            connection = await self._connection()
            try:
                result = await connection.call(self.info.name, arguments)
            except _ConnectionLost:
                raise ToolError(
                    f"the MCP server {connection.label} stopped during the call twice"
                ) from None
        text = connection.secrets.redact(result_text(result))
        if result.is_error:
            raise ToolError(text or f"the MCP tool {self.info.name} failed")
        return text


def server_tools(connection: McpConnection, spec: McpServerSpec) -> list[McpToolInfo]:
    """The tools of a server that the spec lets through, named as the model will see them."""
    allowed = set(spec.allowed_tools) if spec.allowed_tools is not None else None
    infos = []
    for tool in connection.tools:
        if allowed is not None and tool.name not in allowed:
            continue
        schema = tool.input_schema if isinstance(tool.input_schema, dict) else None
        try:
            check_schema(schema)
        except ValueError:
            log.warning(
                "MCP server %s: tool %r has an unusable input schema; skipped",
                connection.label,
                tool.name,
            )
            continue
        assert schema is not None
        hints = tool.annotations
        idempotent = (
            spec.idempotent
            if spec.idempotent is not None
            else bool(hints and (hints.read_only_hint or hints.idempotent_hint))
        )
        name = exposed_tool_name(spec.tool_prefix, tool.name)
        infos.append(
            McpToolInfo(
                name=tool.name,
                exposed_name=name,
                definition=ToolDefinition(
                    name=name,
                    description=tool.description or tool.title or "",
                    parameters=schema,
                ),
                idempotent=idempotent,
            )
        )
    if allowed is not None:
        missing = allowed - {tool.name for tool in connection.tools}
        if missing:
            log.warning(
                "MCP server %s has no tools named %s", connection.label, ", ".join(sorted(missing))
            )
    return infos
