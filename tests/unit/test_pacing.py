"""Reading a model's stream with deadlines: order, a None at each deadline, errors, and the
stream closed however the reader stops (before and after the first deadline)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from agentruns.engine.pacing import with_deadlines


class Stream:
    """An async generator of `items` with a pause (seconds) before each; records closing."""

    def __init__(self, items: list[object], pauses: list[float], fail: bool = False) -> None:
        self.items, self.pauses, self.fail = items, pauses, fail
        self.closed = False

    async def run(self) -> AsyncIterator[object]:
        try:
            for item, pause in zip(self.items, self.pauses, strict=True):
                await asyncio.sleep(pause)
                yield item
            if self.fail:
                raise RuntimeError("the model broke")
        finally:
            self.closed = True


async def test_events_in_order_and_a_none_when_a_deadline_passes_during_a_pause() -> None:
    stream = Stream(["a", "b", "c"], [0, 0, 0.3])
    loop = asyncio.get_running_loop()
    due: list[float] = []  # a deadline from the second event on, as when a delta is held

    seen: list[object] = []
    async with contextlib.aclosing(
        with_deadlines(stream.run(), lambda: due[0] if due else None)
    ) as events:
        async for event in events:
            seen.append(event)
            if event == "b":
                due.append(loop.time() + 0.05)
            elif event is None:
                due.clear()
    assert seen == ["a", "b", None, "c"]
    assert stream.closed


async def test_events_that_arrived_together_come_before_a_deadline_already_passed() -> None:
    """A whole reply read at once: the deadline passed with its first event, but the None
    comes only once the events that came with it are out, and none comes before them."""

    async def burst() -> AsyncIterator[object]:
        await asyncio.sleep(0.01)
        for item in ("a", "b", "c"):
            yield item  # no wait between them: they arrived in one read
        await asyncio.sleep(0.2)
        yield "d"

    loop = asyncio.get_running_loop()
    due: list[float] = []
    seen: list[object] = []
    async with contextlib.aclosing(
        with_deadlines(burst(), lambda: due[0] if due else None)
    ) as events:
        async for event in events:
            seen.append(event)
            if event == "a":
                due.append(loop.time())  # due at once, as a delta after a pause is
            elif event is None:
                due.clear()
    assert seen == ["a", "b", "c", None, "d"]


@pytest.mark.parametrize("with_deadline", [False, True])
async def test_a_reader_that_stops_early_closes_the_stream(with_deadline: bool) -> None:
    stream = Stream(["a", "b", "c"], [0, 0, 0])
    deadline = (lambda: asyncio.get_running_loop().time() + 10) if with_deadline else lambda: None
    async with contextlib.aclosing(with_deadlines(stream.run(), deadline)) as events:
        async for event in events:
            assert event == "a"
            break
    assert stream.closed


@pytest.mark.parametrize("with_deadline", [False, True])
async def test_a_cancelled_reader_closes_the_stream(with_deadline: bool) -> None:
    stream = Stream(["a", "b"], [0, 10])
    deadline = (lambda: asyncio.get_running_loop().time() + 20) if with_deadline else lambda: None

    async def read() -> None:
        async with contextlib.aclosing(with_deadlines(stream.run(), deadline)) as events:
            async for _ in events:
                pass

    task = asyncio.create_task(read())
    await asyncio.sleep(0.05)  # "a" read, now waiting 10 s for "b"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.closed


@pytest.mark.parametrize("with_deadline", [False, True])
async def test_an_error_of_the_stream_reaches_the_reader(with_deadline: bool) -> None:
    stream = Stream(["a"], [0], fail=True)
    deadline = (lambda: asyncio.get_running_loop().time() + 10) if with_deadline else lambda: None
    seen: list[object] = []
    with pytest.raises(RuntimeError, match="the model broke"):
        async for event in with_deadlines(stream.run(), deadline):
            seen.append(event)
    assert seen == ["a"]
    assert stream.closed


async def test_a_first_event_given_comes_before_the_stream() -> None:
    stream = Stream(["b", "c"], [0, 0])
    async with contextlib.aclosing(with_deadlines(stream.run(), lambda: None, "a")) as events:
        assert [event async for event in events] == ["a", "b", "c"]
    assert stream.closed
