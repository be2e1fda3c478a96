"""Client-side tool calls: claims and answers posted by callers, and the deadline of a paused run.

A claim lives inside its entry of the run's `pending_tool_calls` (`"claim": {"by", "until"}`),
so it is written under the same row lock as the answers and vanishes with the entry when the
call is answered; `render_run` leaves it out of the run object.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from agentruns.store.clock import iso, now
from agentruns.store.database import Database
from agentruns.store.messages import append_messages, next_position
from agentruns.store.runs import StateConflict
from agentruns.store.tables import run_messages, runs
from agentruns.store.transitions import CLAIM_KEY, render_run, status_events, update_run

TIMEOUT_ERROR = "tool_response_timeout"


class UnknownToolCall(ValueError):
    """A response names a tool call id the run is not waiting for."""


class ClaimRefused(StateConflict):
    """A claim the caller cannot have: `reason` is `claimed`, `answered` or `not_waiting`."""

    def __init__(self, reason: str, message: str, *, claimed_until: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.claimed_until = claimed_until


async def _answered_calls(conn: Any, run_id: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The last assistant message's tool calls, and the outputs already stored for them."""
    rows = list(
        await conn.execute(
            sa.select(run_messages.c.message)
            .where(run_messages.c.run_id == run_id)
            .order_by(run_messages.c.position.desc())
            .limit(200)
        )
    )
    outputs: dict[str, str] = {}
    for row in rows:
        message = row.message
        if message["role"] == "tool":
            outputs[message["tool_call_id"]] = message["content"]
        elif message["role"] == "assistant":
            return list(message.get("tool_calls") or []), outputs
    return [], outputs


async def _already_applied(conn: Any, run_id: str, responses: list[tuple[str, str]]) -> bool:
    """Whether every response is already stored, identically, for the last tool-call turn."""
    calls, outputs = await _answered_calls(conn, run_id)
    known = {call["id"] for call in calls}
    return all(cid in known and outputs.get(cid) == output for cid, output in responses)


async def submit_tool_responses(
    db: Database, project_id: str, run_id: str, responses: list[tuple[str, str]]
) -> dict[str, Any] | None:
    """Store the caller's outputs; when none is missing, queue the run again.

    Nothing is written unless every response is acceptable: unknown ids raise
    `UnknownToolCall`, a different output for an answered call `StateConflict`.
    """
    async with db.write() as tx:
        row = await _locked_run(tx, project_id, run_id)
        if row is None:
            return None
        if row.status != "awaiting_tool_calls":
            if await _already_applied(tx.conn, run_id, responses):
                # A retry of the answer that resumed the run (its reply was lost): same result.
                return render_run(row)
            if row.error and row.error.get("type") == TIMEOUT_ERROR:
                raise StateConflict(
                    f"too late: the run stopped waiting for tool responses at "
                    f"{iso(row.completed_at)} and failed with {TIMEOUT_ERROR}"
                )
            raise StateConflict(f"the run is not awaiting tool responses; it is {row.status}")
        calls, outputs = await _answered_calls(tx.conn, run_id)
        by_id = {call["id"]: call for call in calls}
        fresh: dict[str, str] = {}
        for call_id, output in responses:
            if call_id not in by_id:
                raise UnknownToolCall(call_id)
            known = outputs.get(call_id, fresh.get(call_id))
            if known is not None and known != output:
                raise StateConflict(
                    f"tool call {call_id} was already answered with a different output"
                )
            if known is None:
                fresh[call_id] = output
        if not fresh:
            return render_run(row)
        new_messages = [
            {"role": "tool", "tool_call_id": cid, "name": by_id[cid]["name"], "content": out}
            for cid, out in fresh.items()
        ]
        await append_messages(tx, run_id, await next_position(tx, run_id), new_messages)
        results = [
            *row.results,
            *(
                {
                    "type": "tool_output",
                    "tool_call_id": m["tool_call_id"],
                    "name": m["name"],
                    "output": m["content"],
                }
                for m in new_messages
            ),
        ]
        answered = outputs.keys() | fresh.keys()
        waiting = [call for call in row.pending_tool_calls if call["id"] not in answered]
        events: list[Any] = [
            (
                "tool_call.completed",
                {**by_id[m["tool_call_id"]], "output": m["content"], "is_error": False},
            )
            for m in new_messages
        ]
        values: dict[str, Any] = {"results": results, "pending_tool_calls": waiting}
        if not waiting:
            values.update(status="queued", queued_at=now(), tool_response_deadline=None)
            events.extend(status_events("queued"))
        updated = await update_run(tx, run_id, values, events=events)
    return render_run(updated)


async def _locked_run(tx: Any, project_id: str, run_id: str) -> Any | None:
    """The run's row, locked until the transaction ends (SQLite: the write lock already is)."""
    statement = (
        sa.select(runs)
        .where(runs.c.id == run_id, runs.c.project_id == project_id)
        .with_for_update()
    )
    return (await tx.conn.execute(statement)).first()


async def claim_tool_call(
    db: Database, project_id: str, run_id: str, call_id: str, claimant: str, lease_s: float
) -> dict[str, Any] | None:
    """Give `claimant` the pending call until `lease_s` from now; None if there is no such run.

    Taken when unclaimed, expired, or already the claimant's (which extends it). Raises
    `UnknownToolCall` for an id that is neither pending nor answered in the last turn, and
    `ClaimRefused` otherwise; nothing is written then.
    """
    async with db.write() as tx:
        row = await _locked_run(tx, project_id, run_id)
        if row is None:
            return None
        if row.status != "awaiting_tool_calls":
            raise ClaimRefused(
                "not_waiting", f"the run is not awaiting tool calls; it is {row.status}"
            )
        pending = [dict(call) for call in row.pending_tool_calls]
        entry = next((call for call in pending if call["id"] == call_id), None)
        if entry is None:
            _calls, outputs = await _answered_calls(tx.conn, run_id)
            if call_id in outputs:
                raise ClaimRefused("answered", f"tool call {call_id} is already answered")
            raise UnknownToolCall(call_id)
        ts = now()
        held = entry.get(CLAIM_KEY)
        if held and held["by"] != claimant and held["until"] > ts:
            raise ClaimRefused(
                "claimed",
                f"tool call {call_id} is claimed by another claimant until {iso(held['until'])}",
                claimed_until=held["until"],
            )
        entry[CLAIM_KEY] = {"by": claimant, "until": ts + lease_s}
        # Not `update_run`: a claim is invisible in the run object, so it is no change a
        # reader should see (no `updated_at` bump, no event).
        await tx.conn.execute(
            runs.update().where(runs.c.id == run_id).values(pending_tool_calls=pending)
        )
    return {"tool_call_id": call_id, "claimant": claimant, "claimed_until": iso(ts + lease_s)}


async def fail_expired_tool_waits(db: Database, *, limit: int = 100) -> int:
    """Fail paused runs whose `tool_response_timeout_s` passed."""
    ts = now()
    expired = sa.and_(runs.c.status == "awaiting_tool_calls", runs.c.tool_response_deadline < ts)
    async with db.read() as conn:
        ids = list((await conn.execute(sa.select(runs.c.id).where(expired).limit(limit))).scalars())
    count = 0
    for run_id in ids:
        async with db.write() as tx:
            row = (
                await tx.conn.execute(sa.select(runs.c.results).where(runs.c.id == run_id))
            ).one()
            error = {
                "type": TIMEOUT_ERROR,
                "message": "no tool responses arrived before the run's tool_response_timeout_s",
            }
            done = await update_run(
                tx,
                run_id,
                {
                    "status": "failed",
                    "error": error,
                    "results": [*row.results, {"type": "error", "error": error}],
                    "completed_at": ts,
                    "tool_response_deadline": None,
                },
                where=[expired],
                events=status_events("failed"),
            )
            count += done is not None
    return count
