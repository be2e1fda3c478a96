"""A deliberately plain SSE reader, so the tests check the wire format themselves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass
class Event:
    id: int
    type: str
    data: Any


def read_events(
    base_url: str,
    run_id: str,
    key: str,
    *,
    last_event_id: int | None = None,
    after: int | None = None,
    timeout_s: float = 20,
) -> Iterator[Event]:
    headers = {"Authorization": f"Bearer {key}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    params = {} if after is None else {"after": after}
    url = f"{base_url}/v1/agent-runs/{run_id}/events"
    with httpx.stream("GET", url, headers=headers, params=params, timeout=timeout_s) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    yield Event(int(fields["id"]), fields["event"], orjson.loads(fields["data"]))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
