"""A minimal Server-Sent Events parser for provider streams.

Both providers send small events (`event:` plus one `data:` line), so a line-based
parser is all we need; it costs far less CPU per token than a general-purpose SSE
client. It is fed lines rather than reading them itself, so that an adapter reading a
stream is one suspended generator, not one per layer: thousands of model calls can be
waiting at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


class SSEParser(Generic[T]):
    """Groups lines into events (the spec's rules, minus `id:`/`retry:`) for `on_event`.

    `feed` returns what `on_event` returns for the event a line completes, so that the
    reader keeps no event alive while it waits for the next line.
    """

    __slots__ = ("_data", "_event", "_on_event")

    def __init__(self, on_event: Callable[[SSEEvent], T | None]) -> None:
        self._on_event = on_event
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> T | None:
        """What the event this line completes gives, if any."""
        if not line:
            return self.end()
        if line[0] == ":":
            return None
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def end(self) -> T | None:
        """Ends the event still open, if any (some servers omit the blank line after the
        last one)."""
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(self._event or "message", "\n".join(self._data))
        self._event = ""
        self._data.clear()
        return self._on_event(event)
