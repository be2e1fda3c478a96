"""Errors raised by the SDK.

AgentRunsError                       (agentruns.errors)
└── AgentRunsClientError
    ├── APIConnectionError           the server was unreachable, or its stream kept dropping
    ├── APIError                     the server answered with an error envelope
    │   ├── BadRequest               400
    │   ├── AuthenticationError      401
    │   ├── NotFound                 404
    │   ├── Conflict                 409
    │   ├── PayloadTooLarge          413
    │   ├── ValidationError          422
    │   ├── RateLimited              429, `retry_after` from the header
    │   └── ServerError              5xx
    ├── WaitTimeout                  `runs.wait(timeout=...)` gave up; the run goes on
    ├── RunError                     the run ended without completing
    │   ├── RunFailed
    │   └── RunCancelled
    ├── MissingToolHandler           a paused run asks for a tool with no local handler
    └── ToolHandlerError             a handler raised, with `raise_on_tool_error=True`
"""

from __future__ import annotations

from typing import Any

import httpx

from agentruns.errors import AgentRunsError

__all__ = [
    "APIConnectionError",
    "APIError",
    "AgentRunsClientError",
    "AuthenticationError",
    "BadRequest",
    "Conflict",
    "MissingToolHandler",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RunCancelled",
    "RunError",
    "RunFailed",
    "ServerError",
    "ToolHandlerError",
    "ValidationError",
    "WaitTimeout",
    "error_from_response",
]


class AgentRunsClientError(AgentRunsError):
    """The SDK could not do what was asked."""


class APIConnectionError(AgentRunsClientError):
    """The server could not be reached."""


class APIError(AgentRunsClientError):
    """The server answered with an error."""

    def __init__(self, status_code: int, type: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status_code} {type}: {message}")
        self.status_code = status_code
        self.type = type
        self.message = message
        self.details = details


class BadRequest(APIError):
    """400: the request could not be read."""


class AuthenticationError(APIError):
    """401: the API key is missing or wrong."""


class NotFound(APIError):
    """404: no such object in this project."""


class Conflict(APIError):
    """409: the object's state forbids the call."""


class PayloadTooLarge(APIError):
    """413: the request body is too large."""


class ValidationError(APIError):
    """422: the request is well formed but invalid; `details` says where."""


class RateLimited(APIError):
    """429: too many requests; `retry_after` is in seconds, when the server said."""

    def __init__(
        self,
        status_code: int,
        type: str,
        message: str,
        details: Any = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status_code, type, message, details)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: the server failed."""


class WaitTimeout(AgentRunsClientError, TimeoutError):
    """Waiting for a run took longer than the timeout; the run itself is unaffected."""

    def __init__(self, run_id: str, timeout: float) -> None:
        super().__init__(f"run {run_id} did not finish within {timeout:g}s")
        self.run_id = run_id
        self.timeout = timeout


class RunError(AgentRunsClientError):
    """The run ended without completing; `run` is the run object."""

    def __init__(self, run: dict[str, Any]) -> None:
        self.run = run
        self.error: dict[str, Any] | None = run.get("error")
        super().__init__(self._describe())

    def _describe(self) -> str:
        return f"run {self.run.get('id')} {self.run.get('status')}"


class RunFailed(RunError):
    """The run failed; `error` is the server's `{type, message}`."""

    def _describe(self) -> str:
        if not self.error:
            return super()._describe()
        return f"{super()._describe()}: {self.error.get('type')}: {self.error.get('message')}"


class RunCancelled(RunError):
    """The run was cancelled."""


class MissingToolHandler(AgentRunsClientError):
    """The run waits for tools that have no local handler; nothing was answered.

    The run stays `awaiting_tool_calls` until its deadline: re-attach with handlers for
    `tool_names` (`run_agent(resume_run_id=run_id)`) or answer with `send_tool_responses`.
    """

    def __init__(self, run_id: str, tool_names: list[str]) -> None:
        names = ", ".join(sorted(set(tool_names)))
        super().__init__(
            f"run {run_id} waits for tool(s) with no handler: {names}; it stays paused "
            "(set_tools(...) then run_agent(resume_run_id=...) to answer)"
        )
        self.run_id = run_id
        self.tool_names = sorted(set(tool_names))


class ToolHandlerError(AgentRunsClientError):
    """A tool handler raised and `raise_on_tool_error` was set; the cause is chained.

    The other calls of the same turn were answered; this one was not, so the run stays
    `awaiting_tool_calls` and can be resumed.
    """

    def __init__(self, run_id: str, tool_call_id: str, tool_name: str, exc: BaseException):
        super().__init__(
            f"tool {tool_name} (call {tool_call_id} of run {run_id}) raised "
            f"{type(exc).__name__}: {exc}"
        )
        self.run_id = run_id
        self.tool_call_id = tool_call_id
        self.tool_name = tool_name


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error for an error response (its body must have been read)."""
    status = response.status_code
    type_, message, details = "http_error", response.reason_phrase or f"HTTP {status}", None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        type_ = str(error.get("type") or type_)
        message = str(error.get("message") or message)
        details = error.get("details")
    elif response.text:
        # Not our envelope (a proxy's error page, say): keep the start of it, it's the only clue.
        message = response.text.strip()[:200]
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    if cls is RateLimited:
        return RateLimited(status, type_, message, details, retry_after=_retry_after(response))
    return cls(status, type_, message, details)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date, which this server never sends
