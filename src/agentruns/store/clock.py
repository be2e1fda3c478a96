"""Time and identifiers, in one place so that tests and the store agree on them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime


def now() -> float:
    """Unix seconds: how every time is stored."""
    return time.time()


def new_id() -> str:
    return str(uuid.uuid4())


def iso(ts: float | None) -> str | None:
    """Render stored seconds as ISO 8601 UTC, as the API shows times."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
