"""A run's deadline: `asyncio.timeout` made small enough to hold thousands of times.

Every executing run sits inside one for its whole life, mostly waiting for its model.
An `asyncio.Timeout` keeps an instance dict, a bound method and a copy of the context
for its timer (about 0.7 KB); this one has slots, and its timer runs in one empty
context shared by all (about 0.2 KB). It behaves the same: when the time comes, the
task is cancelled, and the cancellation leaves the block as a `TimeoutError` unless
someone else cancelled the task too.
"""

from __future__ import annotations

import asyncio
import contextvars
from types import TracebackType

# The timer only cancels a task: it needs none of the caller's context variables.
_NO_CONTEXT = contextvars.Context()


def _expire(deadline: Deadline) -> None:
    deadline.expired = True
    if deadline.task is not None:
        deadline.task.cancel()


class Deadline:
    """`async with Deadline(when):` the block, cancelled at loop time `when`."""

    __slots__ = ("cancelling", "expired", "handle", "task", "when")

    def __init__(self, when: float) -> None:
        self.when = when
        self.task: asyncio.Task[object] | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.cancelling = 0
        self.expired = False

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self.task, self.cancelling = task, task.cancelling()
        loop = asyncio.get_running_loop()
        self.handle = loop.call_at(self.when, _expire, self, context=_NO_CONTEXT)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        task, self.task = self.task, None  # the task no longer refers to itself through us
        # Our cancellation, unless someone else cancelled the task too meanwhile.
        if (
            self.expired
            and task is not None
            and task.uncancel() <= self.cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
