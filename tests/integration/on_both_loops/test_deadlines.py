"""Runs' deadlines behave as `asyncio.timeout` does, many of them on one timer (on both
loops: uvloop counts its timers in milliseconds)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from agentruns.deadlines import Deadlines

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")
DEADLINES = Deadlines()


async def _after(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_block_that_outlives_its_deadline_raises_timeout_error_then() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with DEADLINES.at(await _after(0.05)):
            await asyncio.sleep(5)
    assert 0.04 <= loop.time() - started < 2
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_deadline_already_past_strikes_at_the_first_wait() -> None:
    reached = []
    with pytest.raises(TimeoutError):
        async with DEADLINES.at(await _after(-1)):
            reached.append("before")
            await asyncio.sleep(1)
            reached.append("after")
    assert reached == ["before"]


async def test_a_block_done_in_time_is_left_alone_afterwards() -> None:
    VAR.set("mine")
    async with DEADLINES.at(await _after(0.05)) as deadline:
        await asyncio.sleep(0)
    assert deadline.task is None and not deadline.expired
    await asyncio.sleep(0.1)  # past the deadline: nothing cancels this task
    assert VAR.get() == "mine"


async def test_someone_elses_cancellation_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    # Far off: on a loaded machine the first part must not meet it.
    when = loop.time() + 5

    async def block() -> None:
        async with DEADLINES.at(when):
            await asyncio.sleep(10)

    # Alone, before the deadline.
    task = asyncio.create_task(block())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Together with the deadline, in the same turn of the loop.
    when = loop.time() + 0.05
    task = asyncio.create_task(block())
    loop.call_at(when, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_inner_asyncio_timeout_still_works_inside() -> None:
    with pytest.raises(TimeoutError):
        async with DEADLINES.at(await _after(5)):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(1)
    async with DEADLINES.at(await _after(5)):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(1)
        await asyncio.sleep(0)  # the run goes on


async def test_many_blocks_share_one_timer_and_each_times_out_at_its_own_time() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    start = loop.time()
    due = [0.3, 0.1, 0.2, 0.1, 9.0]
    timed_out: list[tuple[int, float]] = []

    async def block(i: int) -> None:
        try:
            async with deadlines.at(start + due[i]):
                await asyncio.sleep(0.6)
        except TimeoutError:
            timed_out.append((i, loop.time() - start))

    # Entered latest first: the one timer moves to the earliest.
    await asyncio.gather(*(block(i) for i in range(len(due))))
    assert sorted(i for i, _ in timed_out[:2]) == [1, 3]
    assert [i for i, _ in timed_out[2:]] == [2, 0]  # the last one finished in time
    for i, at in timed_out:
        assert due[i] <= at + 0.005 < due[i] + 0.25


async def test_finished_blocks_do_not_pile_up() -> None:
    deadlines = Deadlines()
    for _ in range(1000):
        async with deadlines.at(await _after(600)):
            await asyncio.sleep(0)
    assert len(deadlines._heap) <= 65  # those still waiting their turn to be dropped
