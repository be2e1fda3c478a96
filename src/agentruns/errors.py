"""The exception tree of agentruns.

    AgentRunsError
    ├── ConfigurationError          settings or CLI misuse
    ├── StoreError                  a database failure, wrapped at the store boundary
    ├── LeaseLost                   a worker no longer owns the run it is executing
    ├── ModelError                  a provider failed; `retryable` says whether to try again
    └── ToolError                   a server-side tool failed (its text goes back to the model)

HTTP errors of the API live in `agentruns.api.errors`; errors of the SDK in
`agentruns.client.errors`.
"""

from __future__ import annotations


class AgentRunsError(Exception):
    """Something went wrong in agentruns."""


class ConfigurationError(AgentRunsError):
    """The configuration is invalid."""


class StoreError(AgentRunsError):
    """The database failed."""


class LeaseLost(AgentRunsError):
    """This worker no longer owns the run (it was cancelled, or its lease expired)."""


class ModelError(AgentRunsError):
    """The model provider failed."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status_code = status_code
        self.retry_after = retry_after


class ToolError(AgentRunsError):
    """A server-side tool failed."""
