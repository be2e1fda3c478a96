"""Reading a model's stream while a deadline may come due between two of its events.

Token deltas are written in small groups: one that arrives soon after the last write
waits for the next. Waiting "for the next delta" is not enough, since the model may
pause right after it (say, while it writes a tool call's arguments): the delta must
then be written when its short wait is over. So once a delta is held back, the stream
is read by a task of its own into a list, and the reader can stop waiting for it at a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Pump:
    """Reads a stream into a list from a task of its own, so that the reader can stop
    waiting for its next event at a deadline.

    A list and one future rather than an `asyncio.Queue`, which (three deques and an
    Event) weighs about 2 KB.
    """

    __slots__ = ("pending", "task", "waiter")

    def __init__(self, stream: AsyncIterator[object]) -> None:
        self.pending: list[object] = []
        self.waiter: asyncio.Future[None] | None = None
        self.task = asyncio.create_task(self._read(stream))

    def _put(self, item: object) -> None:
        self.pending.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def _read(self, stream: AsyncIterator[object]) -> None:
        try:
            async for event in stream:
                self._put(event)
        except Exception as exc:
            self._put(_Failed(exc))
        else:
            self._put(_END)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def with_deadlines(
    stream: AsyncIterator[T], deadline: Callable[[], float | None], first: T | None = None
) -> AsyncGenerator[T | None, None]:
    """`first` if given, then the events of `stream`; None whenever `deadline()` (a loop
    time) has passed and no event is ready: events that have arrived (a whole reply often
    comes in one read) are yielded first, so what is held back until then goes out with them.

    Until there is a deadline the stream is read directly; from the first one on, by a
    task of its own that keeps reading while the consumer handles an event. The stream is
    closed when the consumer stops early or is cancelled.
    """
    # Most of a model call's life is spent waiting for its first token, when nothing is
    # held back and there is no deadline: no task for that part, and no closures (thousands
    # of calls can be in flight; a task with its frames weighs about 1 KB). The executor
    # goes further: it waits for the first event before this generator exists at all.
    pump: _Pump | None = None
    try:
        if first is not None:
            yield first
        while deadline() is None:
            try:
                event = await anext(stream)
            except StopAsyncIteration:
                return
            yield event

        pump = _Pump(stream)
        loop = asyncio.get_running_loop()
        while True:
            if not pump.pending:
                pump.waiter = loop.create_future()
                due = deadline()
                if due is None:
                    await pump.waiter
                else:
                    try:
                        async with asyncio.timeout_at(due):
                            await pump.waiter
                    except TimeoutError:
                        if not pump.pending:  # else what arrived meanwhile comes first
                            yield None
                        continue
            item = pump.pending.pop(0)
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        if pump is not None:
            await pump.stop()
        # Closing a stream that has ended does nothing; one stopped mid-way (the consumer
        # left, or the pump was cancelled before it began) lets go of its connection.
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
