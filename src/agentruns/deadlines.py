"""Runs' deadlines: `asyncio.timeout` made small enough to hold thousands of times.

Every executing run sits inside one for its whole life, mostly waiting for its model.
An `asyncio.Timeout` keeps an instance dict and a timer with a copy of the context
(about 0.7 KB each). Here a worker's deadlines share one timer, set for the earliest of
them, and each costs a slotted object and an entry in a heap (about 0.15 KB). They behave
the same: when the time comes, the task is cancelled, and the cancellation leaves the
block as a `TimeoutError` unless someone else cancelled the task too.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
from types import TracebackType

# The timer only cancels tasks: it needs none of the caller's context variables.
_NO_CONTEXT = contextvars.Context()


class Deadlines:
    """The deadlines of one event loop's blocks, on one timer (see `Deadline`)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, Deadline]] = []
        self._live = 0  # blocks inside their deadline; the heap also holds finished ones
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def at(self, when: float) -> Deadline:
        """`async with deadlines.at(when):` the block, cancelled at loop time `when`."""
        return Deadline(self, when)

    def _add(self, deadline: Deadline) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run one each): start afresh
            self._loop, self._heap, self._live, self._timer = loop, [], 0, None
        heapq.heappush(self._heap, (deadline.when, deadline))
        self._live += 1
        if self._timer is None or deadline.when < self._timer.when():
            self._schedule(deadline.when)

    def _remove(self, deadline: Deadline) -> None:
        # Left in the heap until it comes to the top, unless finished ones crowd it.
        self._live -= 1
        if len(self._heap) > 2 * self._live + 64:
            self._heap = [entry for entry in self._heap if entry[1].task is not None]
            heapq.heapify(self._heap)

    def _schedule(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._sweep, context=_NO_CONTEXT)

    def _sweep(self) -> None:
        assert self._loop is not None
        self._timer = None
        # A timer may fire a hair before its time (uvloop counts in whole milliseconds):
        # what is due within a millisecond is due now, rather than a timer set again at once.
        heap, now = self._heap, self._loop.time() + 0.001
        while heap and (heap[0][0] <= now or heap[0][1].task is None):
            _when, deadline = heapq.heappop(heap)
            if deadline.task is not None:
                deadline.expire()
        if heap:
            self._schedule(heap[0][0])


class Deadline:
    """One block's deadline, from `Deadlines.at`."""

    __slots__ = ("cancelling", "expired", "owner", "task", "when")

    def __init__(self, owner: Deadlines, when: float) -> None:
        self.owner = owner
        self.when = when
        self.task: asyncio.Task[object] | None = None  # None when not inside the block
        self.cancelling = 0
        self.expired = False

    def __lt__(self, other: Deadline) -> bool:
        return id(self) < id(other)  # orders equal times in the heap; any order will do

    def expire(self) -> None:
        if self.task is not None and not self.expired:
            self.expired = True
            self.task.cancel()

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline must be used inside a task")
        self.task, self.cancelling = task, task.cancelling()
        self.owner._add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self.task = self.task, None
        self.owner._remove(self)
        # Our cancellation, unless someone else cancelled the task too meanwhile.
        if (
            self.expired
            and task is not None
            and task.uncancel() <= self.cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
