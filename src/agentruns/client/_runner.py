"""What `run_agent` / `execute_agent` share between the sync and async clients.

The rules that make a run with client-side tools safe to follow, drop and re-attach:
- The run's current `pending_tool_calls` (a GET) decides what to answer, never an event: an
  event may be a replay of a turn answered long ago, by this process or another one.
- A runner takes each call id once, before its handler runs, so no reconnect or replay calls
  a handler twice; and it claims the call on the server first, so no other process runs it
  at the same time (see `_claims`).
- A 409 or 422 on posting an answer means the call was answered elsewhere (another process,
  or the run moved on) when the run no longer lists it as pending; only then is it ignored.
- Every request the runner makes is safe to repeat (GETs, identical tool responses, run
  creation under an `Idempotency-Key`), so a dropped connection is retried, not fatal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._base import JSONObject
from ._events import RETRYABLE, ReconnectPolicy, RunEvent
from ._tools import ToolCall
from .errors import Conflict, RateLimited, ValidationError

__all__ = [
    "ANSWER_REFUSED",
    "RETRYABLE_REQUEST",
    "CallLedger",
    "RequestRetry",
    "RunInputs",
    "answered_elsewhere",
    "inputs_message",
]

# Errors after which an idempotent request is worth sending again.
RETRYABLE_REQUEST = (*RETRYABLE, RateLimited)
# What the server answers when a tool response comes too late or twice with another output.
ANSWER_REFUSED = (Conflict, ValidationError)


def inputs_message(string_inputs: Mapping[str, Any]) -> str:
    """The user message made of `string_inputs`: their values, in order, one per line."""
    return "\n".join(str(value) for value in string_inputs.values())


@dataclass(frozen=True)
class RunInputs:
    """What a caller gives `run_agent` to start a run (everything but the agent id)."""

    string_inputs: Mapping[str, Any] | None = None
    vars: Mapping[str, Any] | None = None
    message: str | None = None
    environment: str | None = None
    bundle: str | None = None
    callback_url: str | None = None
    metadata: Mapping[str, Any] | None = None

    def needs_agent(self) -> bool:
        """Whether the agent must be read first: inputs become the message if it has no prompt."""
        return bool(self.string_inputs) and self.message is None

    def agent_version(self, agent: Mapping[str, Any]) -> int | None:
        """The version a run of `agent` will use when it is not the latest one read."""
        published = agent.get("published_version")
        if self.environment == "production" and published and published != agent.get("version"):
            return int(published)
        return None

    def create_fields(self, agent: Mapping[str, Any] | None) -> JSONObject:
        """Keyword arguments for `runs.create`; explicit `vars` win over `string_inputs`."""
        variables = {**(self.string_inputs or {}), **(self.vars or {})}
        message = self.message
        if message is None and self.string_inputs and agent is not None and not agent.get("prompt"):
            message = inputs_message(self.string_inputs)
        return {
            "vars": variables or None,
            "message": message,
            "environment": self.environment,
            "bundle": self.bundle,
            "callback_url": self.callback_url,
            "metadata": self.metadata,
        }


class CallLedger:
    """The tool call ids a runner is done with: claimed (so handed to a handler, at most
    once) or found answered. A call another process holds is not taken: it is tried again."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def is_news(self, event: RunEvent) -> bool:
        """Whether a `tool_calls.required` event names a call this runner has not taken."""
        calls = event.data.get("tool_calls") or []
        return any(str(call.get("id")) not in self.taken for call in calls)

    def fresh(self, run: Mapping[str, Any]) -> list[ToolCall]:
        """The calls the run waits for now that this runner has not taken."""
        if run.get("status") != "awaiting_tool_calls":
            return []
        calls = [ToolCall.from_dict(call) for call in run.get("pending_tool_calls") or []]
        return [call for call in calls if call.id not in self.taken]

    def take(self, call: ToolCall) -> None:
        self.taken.add(call.id)


def answered_elsewhere(run: Mapping[str, Any], call_id: str) -> bool:
    """Whether the run, as it is now, no longer waits for this call."""
    if run.get("status") != "awaiting_tool_calls":
        return True
    return all(call.get("id") != call_id for call in run.get("pending_tool_calls") or [])


class RequestRetry:
    """Backoff for one idempotent request, on the client's reconnect policy."""

    def __init__(self, policy: ReconnectPolicy) -> None:
        self.policy = policy
        self.failures = 0

    def delay(self, exc: Exception) -> float:
        """Seconds to wait before sending again; re-raises when the policy is exhausted."""
        self.failures += 1
        if self.failures > self.policy.attempts:
            raise exc
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return exc.retry_after
        return self.policy.delay(self.failures)
