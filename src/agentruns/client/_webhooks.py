"""`process_webhook_tools`: answer a paused run's tool calls from a webhook delivery.

For integrations that cannot hold an event stream open: the server POSTs
`{"type": "run.awaiting_tool_calls", "data": <run>}` to the run's `callback_url`; the
receiver runs its handlers and posts the outputs with `send_tool_responses`. Verify the
delivery's signature first (Standard Webhooks; the `standardwebhooks` package does it).

These functions have no client, so they cannot claim calls on the server: every call of the
payload runs, and a retried delivery runs its handlers again (at least once). The client's
`process_webhook_tools(payload, post=True)` claims each call first and runs it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ._tools import ToolCall, ToolsMap, normalize_tools, run_calls, run_calls_blocking

__all__ = [
    "AWAITING_EVENT",
    "aprocess_webhook_tools",
    "paused_run",
    "pending_calls",
    "process_webhook_tools",
]

AWAITING_EVENT = "run.awaiting_tool_calls"


def paused_run(payload: Mapping[str, Any] | str | bytes) -> dict[str, Any] | None:
    """The run a delivery (or a bare run object) is about, or None if it waits for no tools.

    Deliveries of other types (`run.completed`, ...) are not an error: a receiver gets them
    all at the same URL.
    """
    if isinstance(payload, str | bytes):
        payload = orjson.loads(payload)
    if not isinstance(payload, Mapping):
        raise TypeError("a webhook payload is a JSON object")
    if "type" in payload and isinstance(payload.get("data"), Mapping):
        if payload["type"] != AWAITING_EVENT:
            return None
        run = dict(payload["data"])
    else:
        run = dict(payload)
    if run.get("status", "awaiting_tool_calls") != "awaiting_tool_calls" or "id" not in run:
        return None
    return run


def pending_calls(run: Mapping[str, Any]) -> list[ToolCall]:
    return [ToolCall.from_dict(call) for call in run.get("pending_tool_calls") or []]


def _responses(outputs: Sequence[tuple[ToolCall, str]]) -> list[dict[str, str]]:
    return [{"tool_call_id": call.id, "output": output} for call, output in outputs]


def process_webhook_tools(
    payload: Mapping[str, Any] | str | bytes,
    tools_map: ToolsMap,
    *,
    raise_on_tool_error: bool = False,
) -> list[dict[str, str]]:
    """Run the handlers for the delivery's `pending_tool_calls`, in parallel threads.

    Returns `[{"tool_call_id", "output"}, ...]` in the order of the calls, ready for
    `send_tool_responses`; `[]` when the delivery asks for no tools. A call without a
    handler raises `MissingToolHandler` before any handler runs.
    """
    run = paused_run(payload)
    if run is None:
        return []
    calls = pending_calls(run)
    outputs = dict(
        run_calls_blocking(
            calls,
            normalize_tools(tools_map),
            str(run.get("agent_id")),
            str(run["id"]),
            raise_on_error=raise_on_tool_error,
        )
    )
    return _responses([(call, outputs[call]) for call in calls])


async def aprocess_webhook_tools(
    payload: Mapping[str, Any] | str | bytes,
    tools_map: ToolsMap,
    *,
    raise_on_tool_error: bool = False,
) -> list[dict[str, str]]:
    """`process_webhook_tools` for asyncio: handlers run concurrently on the event loop."""
    run = paused_run(payload)
    if run is None:
        return []
    outputs = await run_calls(
        pending_calls(run),
        normalize_tools(tools_map),
        str(run.get("agent_id")),
        str(run["id"]),
        raise_on_error=raise_on_tool_error,
    )
    return _responses(outputs)
