"""Time and identifiers, in one place so that tests and the store agree on them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

# PostgreSQL's epoch, in Unix seconds and as a datetime.
_PG_EPOCH_S = 946_684_800.0
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def now() -> float:
    """Unix seconds: how every time is stored."""
    return time.time()


def new_id() -> str:
    return str(uuid.uuid4())


def iso(ts: float | None) -> str | None:
    """Render stored seconds as ISO 8601 UTC with microseconds, as the API shows times.

    Rounded to the microsecond exactly as PostgreSQL's `to_timestamp` rounds, so that a run
    object rendered in SQL (`transitions.run_object_sql`) says what this says.
    """
    if ts is None:
        return None
    micros = round((ts - _PG_EPOCH_S) * 1_000_000)
    return (_PG_EPOCH + timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
