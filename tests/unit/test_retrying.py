"""Retries around a model stream: only before the first event, with backoff."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from agentruns.engine.models.base import (
    Finish,
    Message,
    ModelEvent,
    TextDelta,
    ToolDefinition,
    Usage,
)
from agentruns.engine.models.retrying import (
    backoff_delay,
    open_with_retries,
    stream_with_retries,
)
from agentruns.errors import ModelError

ANSWER: list[ModelEvent] = [TextDelta("hi"), Usage(1, 1), Finish("stop")]


def transient(retry_after: float | None = None) -> ModelError:
    return ModelError(
        "server failed (500)", retryable=True, status_code=500, retry_after=retry_after
    )


class ScriptedModel:
    """Each call to `stream` plays the next attempt: events, possibly ending in an error."""

    name = "scripted"

    def __init__(self, *attempts: Sequence[ModelEvent | ModelError]) -> None:
        self.attempts = list(attempts)
        self.calls = 0
        self.closed = 0

    async def stream(
        self, messages: list[Message], tools: list[ToolDefinition], settings: dict[str, Any]
    ) -> AsyncIterator[ModelEvent]:
        attempt = self.attempts[self.calls]
        self.calls += 1
        try:
            for item in attempt:
                if isinstance(item, ModelError):
                    raise item
                yield item
        finally:
            self.closed += 1


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def run(model: ScriptedModel, sleeps: Sleeps, **options: Any) -> list[ModelEvent]:
    stream = stream_with_retries(model, [], [], {}, sleep=sleeps, **options)
    return [event async for event in stream]


async def test_a_healthy_stream_passes_through_untouched() -> None:
    model, sleeps = ScriptedModel(ANSWER), Sleeps()

    assert await run(model, sleeps) == ANSWER
    assert (model.calls, sleeps) == (1, [])


async def test_a_retryable_error_before_any_output_is_retried_after_a_backoff() -> None:
    model, sleeps = ScriptedModel([transient()], [transient()], ANSWER), Sleeps()

    assert await run(model, sleeps, base_delay_s=0.5) == ANSWER
    assert model.calls == 3
    assert 0.25 <= sleeps[0] <= 0.5
    assert 0.5 <= sleeps[1] <= 1.0
    assert model.closed == 3


async def test_retry_after_from_the_provider_wins_over_the_backoff() -> None:
    model, sleeps = ScriptedModel([transient(retry_after=3.0)], ANSWER), Sleeps()

    assert await run(model, sleeps) == ANSWER
    assert sleeps == [3.0]


async def test_a_non_retryable_error_is_raised_at_once_unchanged() -> None:
    error = ModelError("bad key (401)", retryable=False, status_code=401)
    model, sleeps = ScriptedModel([error], ANSWER), Sleeps()

    with pytest.raises(ModelError) as raised:
        await run(model, sleeps)
    assert raised.value is error
    assert (model.calls, sleeps) == (1, [])


async def test_an_error_after_output_started_is_not_retried() -> None:
    model, sleeps = ScriptedModel([TextDelta("par"), transient()], ANSWER), Sleeps()
    seen: list[ModelEvent] = []

    with pytest.raises(ModelError) as raised:
        async for event in stream_with_retries(model, [], [], {}, sleep=sleeps):
            seen.append(event)
    assert seen == [TextDelta("par")]
    assert raised.value.retryable
    assert model.calls == 1


async def test_giving_up_says_how_many_attempts_were_made() -> None:
    model, sleeps = ScriptedModel(*[[transient()]] * 3), Sleeps()

    with pytest.raises(ModelError) as raised:
        await run(model, sleeps, attempts=3)
    assert raised.value.message == "server failed (500) (gave up after 3 attempts)"
    assert raised.value.status_code == 500
    assert raised.value.retryable
    assert isinstance(raised.value.__cause__, ModelError)
    assert len(sleeps) == 2


async def test_a_single_attempt_raises_the_original_error() -> None:
    error = transient()
    model, sleeps = ScriptedModel([error]), Sleeps()

    with pytest.raises(ModelError) as raised:
        await run(model, sleeps, attempts=1)
    assert raised.value is error


async def test_stopping_early_closes_the_model_stream() -> None:
    model = ScriptedModel(ANSWER)
    stream = stream_with_retries(model, [], [], {}, sleep=Sleeps())

    assert await anext(stream) == TextDelta("hi")
    await stream.aclose()  # type: ignore[attr-defined]
    assert model.closed == 1


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delay = backoff_delay(attempt, base_delay_s=0.5, max_delay_s=8.0)
        assert ceiling / 2 <= delay <= ceiling


async def test_opening_waits_for_the_first_event_and_hands_over_the_rest() -> None:
    model = ScriptedModel([transient()], ANSWER)
    sleeps = Sleeps()
    first, stream = await open_with_retries(model, [], [], {}, sleep=sleeps)
    assert first == ANSWER[0] and model.calls == 2 and model.closed == 1
    assert [event async for event in stream] == ANSWER[1:]
    assert len(sleeps) == 1 and model.closed == 2


async def test_a_wait_for_the_first_event_cancelled_closes_the_stream() -> None:
    model = SlowModel()
    opening = asyncio.ensure_future(open_with_retries(model, [], [], {}))
    await asyncio.sleep(0.05)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert model.closed


class SlowModel:
    name = "slow"
    closed = False

    async def stream(
        self, messages: list[Message], tools: list[ToolDefinition], settings: dict[str, Any]
    ) -> AsyncIterator[ModelEvent]:
        try:
            await asyncio.sleep(10)
            yield TextDelta("too late")
        finally:
            self.closed = True
