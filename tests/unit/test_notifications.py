"""Notification payloads, and which pushed events an SSE reader may send without a read."""

from __future__ import annotations

import orjson

from agentruns.api.routes.events import _contiguous
from agentruns.store.notify import (
    MAX_PAYLOAD_EVENTS_BYTES,
    RunEvent,
    RunWatch,
    events_payload,
    parse_events_payload,
)

RUN = "8d0f7b8e-1c7a-4a55-9a43-0d2f61f0b6a1"


def test_a_payload_with_events_round_trips() -> None:
    body = events_payload(
        [("message.delta", orjson.dumps({"delta": "a:b"}).decode()), ("message.completed", "{}")]
    )
    assert parse_events_payload(f"{RUN}:message.completed:7:{body}") == (
        RUN,
        "message.completed",
        [RunEvent(7, "message.delta", {"delta": "a:b"}), RunEvent(8, "message.completed", {})],
    )


def test_payloads_without_usable_events_only_wake() -> None:
    assert parse_events_payload(f"{RUN}:run.status") == (RUN, "run.status", None)
    assert parse_events_payload(f"{RUN}:message.delta:3:") == (RUN, "message.delta", None)
    for bad in ("x:[]", "3:not json", "3:[1]", '3:[["a"]]', "3:{}"):
        assert parse_events_payload(f"{RUN}:message.delta:{bad}") == (RUN, "message.delta", None)


def test_events_too_large_for_a_notification_are_left_out() -> None:
    data = orjson.dumps({"delta": "x" * MAX_PAYLOAD_EVENTS_BYTES}).decode()
    assert events_payload([("message.delta", data)]) == ""
    assert events_payload([("message.delta", data[:100] + '"}')]) != ""


def test_a_reader_takes_pushed_events_only_without_gaps() -> None:
    one, two, three = (RunEvent(seq, "message.delta", {"delta": str(seq)}) for seq in (1, 2, 3))
    assert _contiguous([one, two], 0) == [one, two]
    # Heard twice (directly and from the database), in any order: each is sent once.
    assert _contiguous([two, three, two, three], 1) == [two, three]
    # Nothing new (pushed after a read returned them): nothing to send, nothing to read.
    assert _contiguous([one, two], 2) == []
    assert _contiguous([three], 1) is None  # a gap: read the table instead
    assert _contiguous([two, three], 0) is None
    assert _contiguous([], 0) is None  # none pushed: a poll, which reads
    assert _contiguous(None, 0) is None  # a wake-up without its events


def test_a_wake_up_without_its_events_makes_the_reader_read() -> None:
    watch = RunWatch()
    one = RunEvent(1, "message.delta", {"delta": "1"})
    watch.notify([one])
    assert watch.take() == [one]
    watch.notify([one])
    watch.notify(None)  # too large to carry, or notifications were missed
    assert watch.woken.is_set() and watch.take() is None
    assert not watch.woken.is_set() and watch.take() == []
