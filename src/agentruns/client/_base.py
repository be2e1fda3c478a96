"""What the sync and async clients share: where to connect, how to ask, how to read answers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from agentruns import __version__

from ._events import ReconnectPolicy
from ._tools import LocalTool, ToolsMap, normalize_tools
from .errors import APIConnectionError, APIError, error_from_response

if TYPE_CHECKING:
    from agentruns.credentials import Credentials

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CLAIM_LEASE_S",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "BaseClient",
    "Pager",
    "path",
    "resolve_connection",
    "run_create_request",
    "tool_registration_body",
    "without_none",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
ENV_BASE_URL = "AGENTRUNS_BASE_URL"
ENV_API_KEY = "AGENTRUNS_API_KEY"
# The largest page the client asks for; the server may send fewer and says if there is more.
MAX_PAGE_SIZE = 100
# The server sends a heartbeat at least every 15 s, so a silent stream for this long is dead.
STREAM_READ_TIMEOUT = 60.0

JSONObject = dict[str, Any]

# A claim on a tool call (see `_claims`): long enough for most handlers even without a
# renewal, and renewed every third of it anyway. The bounds are the server's.
DEFAULT_CLAIM_LEASE_S = 120.0
MIN_CLAIM_LEASE_S, MAX_CLAIM_LEASE_S = 1.0, 3600.0


def resolve_connection(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """Base URL and key: arguments, else the environment, else saved credentials, else default."""
    base_url = base_url or os.environ.get(ENV_BASE_URL) or None
    api_key = api_key or os.environ.get(ENV_API_KEY) or None
    if base_url is None or api_key is None:
        saved = _saved_credentials()
        # The saved key belongs to the saved server: never send it to another one.
        if saved is not None and (base_url is None or _same_url(base_url, saved.base_url)):
            base_url = base_url or saved.base_url
            api_key = api_key or saved.api_key
    return _normalize_url(base_url or DEFAULT_BASE_URL), api_key


def _saved_credentials() -> Credentials | None:
    # Imported here: only a client that lacks explicit settings pays for reading them.
    from agentruns.config import Settings
    from agentruns.credentials import load_credentials

    return load_credentials(Settings().state_dir)


def _normalize_url(url: str) -> str:
    # Users paste the API root they see in docs ("…/v1"); the client adds /v1 itself.
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def _same_url(a: str, b: str) -> bool:
    return _normalize_url(a) == _normalize_url(b)


def path(*parts: str) -> str:
    """An API path from parts; ids are quoted so they can't change the path's shape."""
    return "/v1/" + "/".join(quote(str(part), safe="") for part in parts)


def without_none(values: Mapping[str, Any]) -> JSONObject:
    return {key: value for key, value in values.items() if value is not None}


def run_create_request(
    agent_id: str,
    *,
    vars: Mapping[str, Any] | None,
    message: str | None,
    callback_url: str | None,
    bundle: str | None,
    environment: str | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> tuple[JSONObject, dict[str, str]]:
    """Body and headers of `POST /v1/agent-runs`; unset fields are left to the server."""
    body = without_none(
        {
            "agent_id": agent_id,
            "vars": dict(vars) if vars is not None else None,
            "message": message,
            "callback_url": callback_url,
            "bundle": bundle,
            "environment": environment,
            "metadata": dict(metadata) if metadata is not None else None,
        }
    )
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return body, headers


def tool_registration_body(tools: list[Mapping[str, Any]], namespace: str) -> JSONObject:
    """Body of `POST /v1/tools`. An inline agent tool spec is accepted as is: its
    `"type": "function"` is dropped (the registry holds only function tools)."""
    items = []
    for tool in tools:
        item = {key: value for key, value in tool.items() if key != "type"}
        if tool.get("type", "function") != "function":
            raise ValueError(f"only function tools can be registered, not {tool.get('type')!r}")
        item.setdefault("namespace", namespace)
        items.append(item)
    return {"tools": items}


class Pager:
    """Follows `next_cursor` across list pages, stopping after `limit` items in all."""

    def __init__(self, params: Mapping[str, Any], limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        self.params = without_none(params)
        self.remaining = limit
        self.done = limit == 0

    def next_params(self) -> JSONObject:
        if self.remaining is not None:
            self.params["limit"] = min(self.remaining, MAX_PAGE_SIZE)
        return dict(self.params)

    def take(self, body: Any) -> list[Any]:
        """The items of a page to hand out; afterwards `done` says whether to fetch another."""
        items = list(body.get("data") or []) if isinstance(body, dict) else []
        if self.remaining is not None:
            items = items[: self.remaining]
            self.remaining -= len(items)
        cursor = body.get("next_cursor") if isinstance(body, dict) else None
        if not cursor or body.get("has_more") is False or self.remaining == 0:
            self.done = True
        else:
            self.params["after"] = cursor
        return items


class BaseClient:
    """Configuration and response handling common to both clients."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        timeout: float,
        reconnect: ReconnectPolicy | None,
        claim_lease_s: float = DEFAULT_CLAIM_LEASE_S,
    ) -> None:
        self.base_url, self.api_key = resolve_connection(base_url, api_key)
        self.timeout = timeout
        self.reconnect = reconnect or ReconnectPolicy()
        # How long a claim on a tool call outlives this process if it dies mid-handler.
        if not MIN_CLAIM_LEASE_S <= claim_lease_s <= MAX_CLAIM_LEASE_S:
            raise ValueError("claim_lease_s must be between 1 and 3600 seconds")
        self.claim_lease_s = float(claim_lease_s)
        self._local_tools: dict[str, LocalTool] = {}

    def set_tools(self, tools: ToolsMap) -> None:
        """Set the local handlers of client-side tools, replacing any set before.

        `tools` maps a tool name to `(schema_or_None, handler)` (or just the handler). A
        handler is `(args: dict, agent_id: str, run_id: str) -> str`, async or plain (plain
        ones run in a thread); a non-string result is sent as JSON text. A schema, when
        given, is the tool's JSON Schema `parameters` (or a whole tool spec holding one):
        arguments that fail it are answered with an error text without calling the handler.
        Schemas are only used locally; the agent must still define the tool on the server.
        """
        self._local_tools = normalize_tools(tools)

    @property
    def local_tools(self) -> Mapping[str, LocalTool]:
        """The handlers `set_tools` registered, by tool name."""
        return dict(self._local_tools)

    def _tools_for(self, tools: ToolsMap | None) -> dict[str, LocalTool]:
        """The handlers of one call: those of `set_tools`, with `tools` over them."""
        return {**self._local_tools, **normalize_tools(tools)}

    def _http_options(self) -> dict[str, Any]:
        headers = {"User-Agent": f"agentruns-python/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return {"base_url": self.base_url, "headers": headers, "timeout": self.timeout}

    def _stream_timeout(self, read: float = STREAM_READ_TIMEOUT) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=read)

    @staticmethod
    def _connection_error(exc: httpx.TransportError, request_path: str) -> APIConnectionError:
        return APIConnectionError(f"{type(exc).__name__} on {request_path}: {exc}")

    @staticmethod
    def _raise_for_status(response: httpx.Response) -> None:
        """Raise the typed error of an error response (its body must have been read)."""
        if response.is_error:
            raise error_from_response(response)

    @staticmethod
    def _body(response: httpx.Response) -> Any:
        """The decoded body of a successful response, None when it has none."""
        BaseClient._raise_for_status(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            # Typically a proxy or a wrong base URL answering with a web page.
            content_type = response.headers.get("content-type", "no content type")
            raise APIError(
                response.status_code, "invalid_response", f"expected JSON, got {content_type}"
            ) from exc

    @staticmethod
    def _data(body: Any) -> Any:
        """The `data` of an envelope; a body that is no envelope is returned as is."""
        if isinstance(body, dict) and "data" in body:
            return body["data"]
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"
