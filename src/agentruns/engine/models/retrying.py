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

__all__ = ["backoff_delay", "stream_with_retries"]


def backoff_delay(attempt: int, *, base_delay_s: float, max_delay_s: float) -> float:
    """Exponential backoff with jitter: half fixed, half random, so workers spread out."""
    ceiling: float = min(max_delay_s, base_delay_s * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


async def stream_with_retries(
    model: Model,
    messages: list[Message],
    tools: list[ToolDefinition],
    settings: dict[str, Any],
    *,
    attempts: int = 4,
    base_delay_s: float = 0.5,
    max_delay_s: float = 8.0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> AsyncIterator[ModelEvent]:
    """`model.stream(...)`, retrying retryable `ModelError`s raised before the first event.

    A provider's `retry_after` wins over the computed backoff. When every
    attempt failed, the last error is raised with the number of attempts in
    its message.
    """
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        started = False
        stream = model.stream(messages, tools, settings)
        try:
            while True:
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    return
                except ModelError as exc:
                    if started or not exc.retryable or attempt == 1 == attempts:
                        raise
                    if attempt == attempts:
                        raise _after_attempts(exc, attempt) from exc
                    delay = exc.retry_after
                    if delay is None:
                        delay = backoff_delay(
                            attempt, base_delay_s=base_delay_s, max_delay_s=max_delay_s
                        )
                    break
                started = True
                yield event
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        await sleep(delay)


def _after_attempts(exc: ModelError, attempts: int) -> ModelError:
    return ModelError(
        f"{exc.message} (gave up after {attempts} attempts)",
        retryable=exc.retryable,
        status_code=exc.status_code,
        retry_after=exc.retry_after,
    )
