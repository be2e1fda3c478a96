"""A run's write finishes even when the run is cancelled during it; then the run stops."""

from __future__ import annotations

import asyncio

import pytest

from agentruns.engine.executor import _uninterruptible


async def test_a_write_cancelled_midway_finishes_before_the_cancellation_is_raised() -> None:
    finished: list[str] = []
    release = asyncio.Event()

    async def write() -> None:
        await release.wait()
        await asyncio.sleep(0)
        finished.append("written")

    runner = asyncio.create_task(_uninterruptible(write()))
    await asyncio.sleep(0.01)
    runner.cancel()
    await asyncio.sleep(0.01)
    runner.cancel()  # cancelled twice: the write still finishes
    assert not runner.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert finished == ["written"]


async def test_a_failed_write_raises_its_error_unless_the_run_was_cancelled() -> None:
    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        await _uninterruptible(failing())

    runner = asyncio.create_task(_uninterruptible(failing()))
    await asyncio.sleep(0)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


async def test_a_write_that_completes_returns_normally() -> None:
    done: list[int] = []

    async def write() -> None:
        await asyncio.sleep(0)
        done.append(1)

    await _uninterruptible(write())
    assert done == [1]


async def test_a_cancellation_that_arrives_as_the_write_ends_is_not_lost() -> None:
    """The run's timeout cancels it in the same turn of the loop in which its write ends:
    the cancellation must still be raised (else the timeout never fires)."""
    loop = asyncio.get_running_loop()
    written = loop.create_future()

    async def write() -> None:
        await written

    runner = asyncio.create_task(_uninterruptible(write()))
    await asyncio.sleep(0)
    written.set_result(None)  # the write ends ...
    runner.cancel()  # ... and the cancellation comes before the runner wakes
    with pytest.raises(asyncio.CancelledError):
        await runner
