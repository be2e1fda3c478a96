"""Run events over SSE: parsing, resuming after a dropped connection, and telling when a run ended.

The sync and async clients share all of this; they differ only in how they read the stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from httpx_sse import ServerSentEvent

from .errors import APIConnectionError, RunCancelled, RunFailed, ServerError, WaitTimeout

__all__ = [
    "RESUME",
    "RETRY",
    "RETRYABLE",
    "STOP",
    "TERMINAL_EVENTS",
    "TERMINAL_STATUSES",
    "Deadline",
    "ReconnectPolicy",
    "RunEvent",
    "StreamCursor",
    "is_final",
    "next_step",
    "run_outcome",
]

TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

# Errors after which reconnecting can help: the connection broke, or the server is restarting.
RETRYABLE = (httpx.TransportError, APIConnectionError, ServerError)

# What a reader does once a connection to the stream has ended.
STOP, RESUME, RETRY = "stop", "resume", "retry"
# A stream connection that stayed up this long was healthy, even if no event came (a long
# model step behind a proxy that closes connections after a while): its end is no failure.
HEALTHY_CONNECTION_S = 10.0


@dataclass(frozen=True)
class RunEvent:
    """One event of a run: `id` is its per-run sequence number."""

    id: int
    type: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


@dataclass(frozen=True)
class ReconnectPolicy:
    """How hard `events()` tries to get a dropped stream back before raising.

    `attempts` counts consecutive failures; any event received, or a connection that
    stayed up for `HEALTHY_CONNECTION_S`, resets it.
    """

    attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, failure: int) -> float:
        return float(min(self.max_delay, self.initial_delay * 2.0 ** (failure - 1)))


@dataclass
class StreamCursor:
    """Where a reader is in a run's event stream, surviving reconnects."""

    run_id: str
    last_id: int | None
    policy: ReconnectPolicy
    failures: int = field(default=0)
    opened_at: float | None = field(default=None)

    def opened(self) -> None:
        """The server accepted a connection to the stream."""
        self.opened_at = time.monotonic()

    def headers(self) -> dict[str, str]:
        return {} if self.last_id is None else {"Last-Event-ID": str(self.last_id)}

    def accept(self, sse: ServerSentEvent) -> RunEvent | None:
        """The event to hand out, or None for what is not one (heartbeats, replays)."""
        if not sse.id or not sse.data:
            # A heartbeat comment ends in a blank line, which the SSE decoder turns into an
            # empty "message" carrying the previous id: that is not an event.
            return None
        seq = int(sse.id)
        if self.last_id is not None and seq <= self.last_id:
            return None  # the server promises no duplicates; this guards a misbehaving proxy
        data = orjson.loads(sse.data)
        self.last_id = seq
        self.failures = 0
        return RunEvent(id=seq, type=sse.event, data=data if isinstance(data, dict) else {})

    def backoff(self, exc: Exception) -> float:
        """Seconds to wait before reconnecting; raises when the policy is exhausted."""
        if self.opened_at is not None and time.monotonic() - self.opened_at >= HEALTHY_CONNECTION_S:
            self.failures = 0
        self.opened_at = None
        self.failures += 1
        if self.failures > self.policy.attempts:
            raise APIConnectionError(
                f"lost the event stream of run {self.run_id} "
                f"{self.policy.attempts} times in a row: {exc}"
            ) from exc
        return self.policy.delay(self.failures)


def is_final(terminal_event: RunEvent, current_run: dict[str, Any]) -> bool:
    """Whether a terminal event is the run's last one, given the run as it is now.

    A continued run has an earlier terminal event in its history; a reader that meets one
    must read on. The terminal event carries the run as it was then: if the run has not
    changed since, nothing follows.
    """
    if current_run.get("status") not in TERMINAL_STATUSES:
        return False
    then, now = terminal_event.data.get("updated_at"), current_run.get("updated_at")
    return then is None or now is None or then == now


def next_step(terminal: RunEvent | None, run: dict[str, Any] | None) -> str:
    """STOP, RESUME (reconnect at once) or RETRY (reconnect after a backoff).

    `terminal` is the terminal event the connection ended on, if any; `run` is the run as
    it is now, or None when the reader stops at the first terminal event regardless.
    """
    if terminal is not None:
        return STOP if run is None or is_final(terminal, run) else RESUME
    # The server closes only after a terminal event; a clean close without one on a finished
    # run means there is nothing left to read (we started past the end).
    if run is not None and run.get("status") in TERMINAL_STATUSES:
        return STOP
    return RETRY


def run_outcome(run: dict[str, Any]) -> dict[str, Any]:
    """The run if it completed; raises `RunFailed` / `RunCancelled` otherwise."""
    status = run.get("status")
    if status == "failed":
        raise RunFailed(run)
    if status == "cancelled":
        raise RunCancelled(run)
    return run


@dataclass(frozen=True)
class Deadline:
    """When a blocking wait on a run gives up (`WaitTimeout`); the run itself goes on."""

    run_id: str
    timeout: float
    at: float

    @classmethod
    def start(cls, run_id: str, timeout: float) -> Deadline:
        return cls(run_id, timeout, time.monotonic() + timeout)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def check(self) -> None:
        if self.remaining() <= 0:
            raise WaitTimeout(self.run_id, self.timeout)
