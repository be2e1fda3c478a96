"""The Python SDK of agentruns: `AgentRunsClient` and `AsyncAgentRunsClient`.

with AgentRunsClient() as client:
    run = client.runs.create(agent_id, vars={"name": "Ada"})
    print(client.runs.wait(run["id"])["last_agent_message"])

With client-side tools (docs/sdk.md):

    client.set_tools({"get_current_time": (None, get_current_time)})
    text = await client.run_agent(agent_id=..., string_inputs={"1": "What time is it?"})
"""

from ._async import AsyncAgentRunsClient, AsyncAgents, AsyncRuns, AsyncTools
from ._events import ReconnectPolicy, RunEvent
from ._sync import AgentRunsClient, Agents, Runs, Tools
from ._tools import LocalTool, ToolHandler, ToolResults, ToolsMap
from ._webhooks import aprocess_webhook_tools, process_webhook_tools
from .errors import (
    AgentRunsClientError,
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    MissingToolHandler,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RunCancelled,
    RunError,
    RunFailed,
    ServerError,
    ToolHandlerError,
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
    "AsyncTools",
    "AuthenticationError",
    "BadRequest",
    "Conflict",
    "LocalTool",
    "MissingToolHandler",
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
    "ToolHandler",
    "ToolHandlerError",
    "ToolResults",
    "Tools",
    "ToolsMap",
    "ValidationError",
    "WaitTimeout",
    "aprocess_webhook_tools",
    "process_webhook_tools",
]
