"""When to try a failed webhook again: the schedule, jitter, and the receiver's Retry-After."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

# Spread retries of many deliveries that failed together (a receiver outage) by ±20 %.
JITTER = 0.2
# A receiver may ask for a pause, not for a delivery to be parked for days.
MAX_RETRY_AFTER_S = 6 * 3600.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def retry_delay(
    schedule: Sequence[float],
    series_attempt: int,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after attempt `series_attempt` failed; None: give up.

    `schedule[i]` is the pause after the (i+1)-th attempt, jittered; a `Retry-After`
    longer than that is honoured.
    """
    if series_attempt < 1 or series_attempt > len(schedule):
        return None
    jitter = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    delay = schedule[series_attempt - 1] * jitter
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
