"""Reading a model's stream while a deadline may come due between two of its events.

Token deltas are written in small groups: one that arrives soon after the last write
waits for the next. Waiting "for the next delta" is not enough, since the model may
pause right after it (say, while it writes a tool call's arguments): the delta must
then be written when its short wait is over. So the stream is read by a task of its
own into a queue, and the reader can stop waiting for the queue at a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


async def with_deadlines(
    stream: AsyncIterator[T], deadline: Callable[[], float | None]
) -> AsyncIterator[T | None]:
    """The events of `stream`; None whenever `deadline()` (a loop time) passes first.

    The stream keeps being read while the consumer handles an event, and it is closed
    when the consumer stops early or is cancelled.
    """
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in stream:
                queue.put_nowait(event)
        except Exception as exc:
            queue.put_nowait(_Failed(exc))
        else:
            queue.put_nowait(_END)

    reader = asyncio.create_task(pump())
    try:
        while True:
            due = deadline()
            if due is None or not queue.empty():
                item = await queue.get()
            else:
                try:
                    async with asyncio.timeout_at(due):
                        item = await queue.get()
                except TimeoutError:
                    yield None
                    continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
