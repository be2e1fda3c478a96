"""Retrying a model call that failed before it produced anything.

Once an event has been yielded the caller may already have published it
(a `message.delta` event), so a retry would duplicate output: from then on
errors go up unchanged and the executor decides.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agentruns.engine.models.base import Message, Model, ModelEvent, ToolDefinition
from agentruns.errors import ModelError

__all__ = ["backoff_delay", "open_with_retries", "stream_with_retries"]


def backoff_delay(attempt: int, *, base_delay_s: float, max_delay_s: float) -> float:
    """Exponential backoff with jitter: half fixed, half random, so workers spread out."""
    ceiling: float = min(max_delay_s, base_delay_s * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


async def open_with_retries(
    model: Model,
    messages: list[Message],
    tools: list[ToolDefinition],
    settings: dict[str, Any],
    *,
    attempts: int = 4,
    base_delay_s: float = 0.5,
    max_delay_s: float = 8.0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> tuple[ModelEvent | None, AsyncIterator[ModelEvent]]:
    """Start `model.stream(...)` and wait for its first event, retrying retryable
    `ModelError`s until then: the first event (None if there was none) and the stream
    holding the rest, which the caller closes.

    A provider's `retry_after` wins over the computed backoff. When every attempt failed,
    the last error is raised with the number of attempts in its message. A coroutine, not
    a generator around the stream: thousands of calls may be waiting for their first
    token at once, and a suspended generator and its bookkeeping weigh more.
    """
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        stream = model.stream(messages, tools, settings)
        try:
            return await anext(stream), stream
        except StopAsyncIteration:
            return None, stream
        except ModelError as exc:
            await _close(stream)
            if not exc.retryable or attempt == 1 == attempts:
                raise
            if attempt == attempts:
                raise _after_attempts(exc, attempt) from exc
            delay = exc.retry_after
            if delay is None:
                delay = backoff_delay(attempt, base_delay_s=base_delay_s, max_delay_s=max_delay_s)
        except BaseException:
            await _close(stream)
            raise
        await sleep(delay)
    raise AssertionError("unreachable")  # the last attempt returns or raises


async def stream_with_retries(
    model: Model,
    messages: list[Message],
    tools: list[ToolDefinition],
    settings: dict[str, Any],
    **retry: Any,
) -> AsyncIterator[ModelEvent]:
    """`model.stream(...)`, retrying retryable `ModelError`s raised before the first event
    (see `open_with_retries`, which takes the same keyword arguments)."""
    first, stream = await open_with_retries(model, messages, tools, settings, **retry)
    try:
        if first is None:
            return
        yield first
        async for event in stream:
            yield event
    finally:
        await _close(stream)


async def _close(stream: AsyncIterator[ModelEvent]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _after_attempts(exc: ModelError, attempts: int) -> ModelError:
    return ModelError(
        f"{exc.message} (gave up after {attempts} attempts)",
        retryable=exc.retryable,
        status_code=exc.status_code,
        retry_after=exc.retry_after,
    )
