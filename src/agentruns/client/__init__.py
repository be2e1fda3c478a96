"""The Python SDK of agentruns: `AgentRunsClient` and `AsyncAgentRunsClient`.

with AgentRunsClient() as client:
    run = client.runs.create(agent_id, vars={"name": "Ada"})
    print(client.runs.wait(run["id"])["last_agent_message"])
"""

from ._async import AsyncAgentRunsClient, AsyncAgents, AsyncRuns
from ._events import ReconnectPolicy, RunEvent
from ._sync import AgentRunsClient, Agents, Runs
from .errors import (
    AgentRunsClientError,
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RunCancelled,
    RunError,
    RunFailed,
    ServerError,
    ValidationError,
    WaitTimeout,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "AgentRunsClient",
    "AgentRunsClientError",
    "Agents",
    "AsyncAgentRunsClient",
    "AsyncAgents",
    "AsyncRuns",
    "AuthenticationError",
    "BadRequest",
    "Conflict",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ReconnectPolicy",
    "RunCancelled",
    "RunError",
    "RunEvent",
    "RunFailed",
    "Runs",
    "ServerError",
    "ValidationError",
    "WaitTimeout",
]
