"""A run's `Deadline` behaves as `asyncio.timeout` does."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from agentruns.engine.deadline import Deadline

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def _after(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_block_that_outlives_its_deadline_raises_timeout_error_then() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with Deadline(await _after(0.05)):
            await asyncio.sleep(5)
    assert 0.04 <= loop.time() - started < 2
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_deadline_already_past_strikes_at_the_first_wait() -> None:
    reached = []
    with pytest.raises(TimeoutError):
        async with Deadline(await _after(-1)):
            reached.append("before")
            await asyncio.sleep(1)
            reached.append("after")
    assert reached == ["before"]


async def test_a_block_done_in_time_is_left_alone_afterwards() -> None:
    VAR.set("mine")
    async with Deadline(await _after(0.05)) as deadline:
        await asyncio.sleep(0)
    assert deadline.handle is None and not deadline.expired
    await asyncio.sleep(0.1)  # past the deadline: nothing cancels this task
    assert VAR.get() == "mine"


async def test_someone_elses_cancellation_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.05

    async def block() -> None:
        async with Deadline(when):
            await asyncio.sleep(5)

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
        async with Deadline(await _after(5)):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(1)
    async with Deadline(await _after(5)):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(1)
        await asyncio.sleep(0)  # the run goes on
