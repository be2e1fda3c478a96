"""A minimal Server-Sent Events reader for provider streams.

Both providers send small events (`event:` plus one `data:` line), so a
line-based reader over `httpx.Response.aiter_lines()` is all we need; it
costs far less CPU per token than a general-purpose SSE client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


async def iter_sse_events(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """Group SSE lines into events (the spec's rules, minus `id:`/`retry:`)."""
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event = ""
            data = []
            continue
        if line[0] == ":":
            continue
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    # Some servers omit the blank line after the last event.
    if data:
        yield SSEEvent(event or "message", "\n".join(data))
