"""A run's most frequent writes on SQLite and PostgreSQL: creating it, and a worker's steps.

The run, its events and its messages change together or not at all; on PostgreSQL each of
these writes is one statement, whose notification carries its events to other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from agentruns.engine import executor as executor_module
from agentruns.engine.executor import Executor
from agentruns.engine.tools.builtin import GetCurrentTime
from agentruns.engine.worker import Worker
from agentruns.errors import LeaseLost
from agentruns.store import events, messages, queue, runs, tables
from agentruns.store.clock import iso
from agentruns.store.database import Database
from agentruns.store.execution import commit_step
from agentruns.store.notify import RunEvent, RunWatch
from agentruns.store.transitions import CLAIM_KEY, iso_sql, render_run, run_object_sql
from integration.store_helpers import make_agent, make_project, make_run

CALL = {"id": "call_1", "name": "get_current_time", "arguments": "{}"}
REPLY = {"role": "assistant", "content": None, "tool_calls": [CALL]}


async def _claimed_run(db: Database) -> tuple[str, dict[str, Any], queue.Lease]:
    project = await make_project(db)
    agent = await make_agent(db, project)
    run = await make_run(db, project, agent["id"], "what time is it?")
    claimed = await queue.claim_next_run(db, "w1", 30)
    assert claimed is not None
    return project, run, claimed[0]


@contextlib.asynccontextmanager
async def _writer_and_listener(postgres_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two processes' databases: one that writes, one listening for its notifications."""
    db, other = Database(postgres_url), Database(postgres_url)
    await other.start()
    try:
        assert other._listener is not None
        await asyncio.wait_for(other._listener.connected.wait(), 10)
        yield db, other
    finally:
        await db.close()
        await other.close()


def _statements_sent(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements `db` sends from now on: through SQLAlchemy, and on the driver's
    connections directly (the hot paths' one-statement writes and reads)."""
    assert db.engine is not None
    sent: list[str] = []
    sa.event.listen(
        db.engine.sync_engine,
        "before_cursor_execute",
        lambda _conn, _cursor, statement, *_: sent.append(statement),
    )
    real_fetch = asyncpg.Connection.fetch

    async def fetch(conn: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(query)
        return await real_fetch(conn, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "fetch", fetch)
    return sent


async def _pushed_until(watch: RunWatch, seq: int) -> list[RunEvent]:
    """The events pushed to `watch` up to event `seq`, waiting at most 5 s for them."""
    pushed: list[RunEvent] = []
    async with asyncio.timeout(5):
        while not pushed or pushed[-1].seq < seq:
            await watch.woken.wait()
            pushed.extend(watch.take() or [])
    return pushed


async def test_steps_append_numbered_events_and_positioned_messages(db: Database) -> None:
    project, run, lease = await _claimed_run(db)
    before = await events.list_events(db, run["id"])
    await commit_step(
        db,
        lease,
        values={"results": [{"type": "tool_call", **CALL}], "usage": {"requests": 1}},
        events=[
            ("message.delta", {"delta": "a\x00b"}),
            ("message.completed", REPLY),
            ("tool_call.started", CALL),
        ],
        messages=[REPLY],
        position=1,
    )
    tool_message = {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}
    await commit_step(
        db,
        lease,
        values={"results": [{"type": "tool_output", "output": "12:00"}]},
        events=[("tool_call.completed", {**CALL, "output": "12:00"})],
        messages=[tool_message],
        position=2,
    )
    log = await events.list_events(db, run["id"])
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert [e.type for e in log[len(before) :]] == [
        "message.delta",
        "message.completed",
        "tool_call.started",
        "tool_call.completed",
    ]
    # U+0000 cannot be stored on PostgreSQL: replaced the same way on both databases.
    assert log[len(before)].data == {"delta": "a\ufffdb"}
    assert log[len(before) + 1].data == REPLY
    assert await messages.load_messages(db, run["id"]) == [
        {"role": "user", "content": "what time is it?"},
        REPLY,
        tool_message,
    ]
    stored = await runs.get_run(db, project, run["id"])
    assert stored["results"] == [{"type": "tool_output", "output": "12:00"}]
    assert stored["usage"] == {"requests": 1}
    assert stored["status"] == "in_progress"
    # The run's event counter moved with the events: the next write numbers on from there.
    await runs.cancel_run(db, project, run["id"])
    log = await events.list_events(db, run["id"])
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert log[-1].type == "run.cancelled"


async def test_a_fenced_out_step_writes_nothing(db: Database) -> None:
    project, run, lease = await _claimed_run(db)
    await runs.cancel_run(db, project, run["id"])
    log = await events.list_events(db, run["id"])
    with pytest.raises(LeaseLost):
        await commit_step(
            db,
            lease,
            values={"results": [{"type": "message", "content": "late"}]},
            events=[("message.completed", {"role": "assistant", "content": "late"})],
            messages=[{"role": "assistant", "content": "late"}],
            position=1,
        )
    assert await events.list_events(db, run["id"]) == log
    assert await messages.load_messages(db, run["id"]) == [
        {"role": "user", "content": "what time is it?"}
    ]
    assert (await runs.get_run(db, project, run["id"]))["results"] == []


async def test_a_step_on_postgres_is_one_statement_heard_by_other_processes(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _writer_and_listener(postgres_url) as (db, other):
        project, run, lease = await _claimed_run(db)
        sent = _statements_sent(db, monkeypatch)
        with other.notifier.watch_run(run["id"]) as watch:
            await commit_step(
                db,
                lease,
                values={"turn_steps": 1},
                events=[("message.delta", {"delta": "hi"}), ("message.completed", REPLY)],
                messages=[REPLY],
                position=1,
            )
            log = await events.list_events(other, run["id"])
            # Another process is woken with the events themselves, as they were stored
            # (after the claim's, which may arrive just before).
            assert (await _pushed_until(watch, log[-1].seq))[-2:] == log[-2:]
        assert len(sent) == 1 and sent[0].startswith("WITH updated AS")
        assert log[-2:] == [
            RunEvent(log[-2].seq, "message.delta", {"delta": "hi"}),
            RunEvent(log[-2].seq + 1, "message.completed", REPLY),
        ]

        # Events too large for a notification wake the reader without them: it reads.
        big = {"delta": "x" * 8_000}
        with other.notifier.watch_run(run["id"]) as watch:
            await commit_step(db, lease, events=[("message.delta", big)])
            await asyncio.wait_for(watch.woken.wait(), 5)
        assert watch.take() is None
        assert (await events.list_events(other, run["id"]))[-1].data == big

        # A status change carries the run object in its events; they ride along too.
        with other.notifier.watch_run(run["id"]) as watch:
            await commit_step(
                db,
                lease,
                values={"status": "completed", "lease_token": None, "last_agent_message": "12"},
                events=["run.status", "run.completed"],
            )
            log = await events.list_events(other, run["id"])
            pushed = await _pushed_until(watch, log[-1].seq)
        assert pushed == log[-2:]
        assert [e.type for e in pushed] == ["run.status", "run.completed"]
        assert pushed[-1].data == await runs.get_run(other, project, run["id"])


async def test_creating_a_run_on_postgres_is_one_statement_that_reads_back_the_same(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _writer_and_listener(postgres_url) as (db, other):
        project = await make_project(db)
        agent = await make_agent(db, project)
        sent = _statements_sent(db, monkeypatch)
        with other.notifier.watch_queue() as queued:
            queued.clear()
            run = await make_run(
                db,
                project,
                agent["id"],
                "hello\x00",
                vars={"a": [1, 2], "b": "x\x00y"},
                metadata={"k": "v"},
            )
            await asyncio.wait_for(queued.wait(), 5)
        assert len(sent) == 1 and sent[0].startswith("WITH created AS")
        assert run == await runs.get_run(other, project, run["id"])
        # U+0000 cannot be stored: the answer already says what was stored instead.
        assert run["status"] == "queued" and run["vars"] == {"a": [1, 2], "b": "x\ufffdy"}
        assert await events.list_events(other, run["id"]) == [RunEvent(1, "run.status", run)]
        assert await messages.load_messages(other, run["id"]) == [
            {"role": "user", "content": "hello\ufffd"}
        ]
        claimed = await queue.claim_next_run(other, "w1", 30)
        assert claimed is not None and claimed[0].run_id == run["id"]


LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look a word up in the caller's dictionary.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
}
TIME = {"type": "builtin", "name": "get_current_time"}


async def _run_to_rest(
    db: Database, project: str, run_id: str, flush_interval_s: float = 0.005
) -> dict[str, Any]:
    """Execute the run with a worker until it completes, fails or pauses; the run then."""
    async with httpx.AsyncClient() as http:
        executor = Executor(db, http=http, default_model="test", flush_interval_s=flush_interval_s)
        worker = Worker(db, executor, poll_interval_s=0.05)
        task = asyncio.create_task(worker.run())
        try:
            with db.notifier.watch_run(run_id) as watch:
                async with asyncio.timeout(10):
                    while (run := await runs.get_run(db, project, run_id))["status"] in (
                        "queued",
                        "in_progress",
                    ):
                        await watch.woken.wait()
                        watch.take()
        finally:
            worker.stop()
            await task
    return run


@pytest.mark.parametrize(
    ("spec", "status"),
    [
        ({"tools": [TIME]}, "completed"),
        ({"tools": [LOOKUP]}, "awaiting_tool_calls"),
        ({"tools": [TIME], "max_steps": 1}, "failed"),
    ],
    ids=["completed", "paused", "failed"],
)
async def test_status_events_carry_the_run_as_stored(
    db: Database, spec: dict[str, Any], status: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's status changes: the run object in their events is the row as committed
    (on PostgreSQL rendered before the UPDATE, which is then the step's one statement)."""
    project = await make_project(db)
    agent = await make_agent(db, project, model="test", **spec)
    created = await make_run(db, project, agent["id"], "what\x00 time is it?", metadata={"k": 1})
    sent = _statements_sent(db, monkeypatch) if db.is_postgres else []
    run = await _run_to_rest(db, project, created["id"])
    assert run["status"] == status
    log = await events.list_events(db, run["id"])
    changes = [e for e in log if e.type.startswith("run.")]
    if status == "awaiting_tool_calls":
        assert changes[-1].type == "run.status"
    else:
        assert [e.type for e in changes[-2:]] == ["run.status", f"run.{status}"]
        assert changes[-2].data == run
    assert changes[-1].data == run
    assert run["metadata"] == {"k": 1} and run["started_at"] is not None
    # On PostgreSQL no write of the worker took a transaction of its own: no UPDATE outside
    # a one-statement write (the claim's is in a CTE too).
    assert not [s for s in sent if s.startswith("UPDATE runs")]


async def test_the_run_object_rendered_in_sql_is_render_run_exactly(postgres_url: str) -> None:
    """`run_object_sql` (claims on PostgreSQL write it into events) against `render_run`,
    on rows with every kind of value: nested JSON, pending calls holding claims, NULLs, and
    times on the half microsecond, where rounding could differ."""
    db = Database(postgres_url)
    try:
        project = await make_project(db)
        agent = await make_agent(db, project)
        rng = random.Random(7)
        made = [
            await make_run(db, project, agent["id"], vars={"a": [1, {"b": None}]}, metadata={})
            for _ in range(3)
        ]
        times = [rng.randint(1_700_000_000_000_000, 1_900_000_000_000_000) for _ in range(9)]
        calls = [{"id": "c1", "name": "lookup", "arguments": "{}", CLAIM_KEY: {"by": "x"}}]
        async with db.write() as tx:
            for i, run in enumerate(made):
                await tx.conn.execute(
                    sa.update(tables.runs)
                    .where(tables.runs.c.id == run["id"])
                    .values(
                        created_at=(times[3 * i] + 0.5) / 1e6,
                        updated_at=times[3 * i + 1] / 1e6,
                        started_at=None if i == 0 else (times[3 * i + 2] + 0.5) / 1e6,
                        completed_at=float(times[3 * i] // 1_000_000),
                        pending_tool_calls=calls if i else [],
                        error={"type": "x", "message": "é ✓"} if i == 2 else None,
                        last_agent_message='quote " and \\ done',
                    )
                )
        async with db.read() as conn:
            rows = (await conn.execute(sa.select(tables.runs, run_object_sql(tables.runs)))).all()
        assert len(rows) == 3
        for row in rows:
            assert row[-1] == render_run(row)
        public = [{"id": "c1", "name": "lookup", "arguments": "{}"}]
        assert sorted(len(row[-1]["pending_tool_calls"]) for row in rows) == [0, 1, 1]
        assert all(row[-1]["pending_tool_calls"] in ([], public) for row in rows)
    finally:
        await db.close()


async def test_times_render_in_sql_as_in_python(postgres_url: str) -> None:
    """`clock.iso` rounds as PostgreSQL's `to_timestamp` does, on the half microsecond too."""
    rng = random.Random(11)
    values = [rng.uniform(1.6e9, 2.0e9) for _ in range(2_000)]
    values += [(rng.randint(1_600_000_000_000_000, 2 * 10**15) + 0.5) / 1e6 for _ in range(2_000)]
    values += [float(rng.randint(1_600_000_000, 2_000_000_000)) for _ in range(200)]
    column = sa.func.unnest(sa.bindparam("values", type_=ARRAY(sa.Float))).column_valued("x")
    db = Database(postgres_url)
    try:
        async with db.read() as conn:
            rows = await conn.execute(sa.select(column, iso_sql(column)), {"values": values})
            rendered = rows.all()
    finally:
        await db.close()
    assert len(rendered) == len(values)
    assert [text for _, text in rendered] == [iso(x) for x, _ in rendered]


@pytest.mark.parametrize(
    ("idempotent", "delay_s", "write_s", "joined"),
    [
        (True, 0.0, 0.0, True),
        (True, 0.2, 0.0, False),
        (True, 0.05, 0.3, False),  # done while the reply is being written
        (False, 0.0, 0.0, False),
    ],
    ids=["quick-idempotent", "slow-idempotent", "done-during-write", "not-idempotent"],
)
async def test_a_quick_idempotent_tool_is_written_with_the_reply(
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    idempotent: bool,
    delay_s: float,
    write_s: float,
    joined: bool,
) -> None:
    """A tool that may run twice starts as soon as the model asks for it, and its output
    joins the reply's write if it answers within the flush interval. Any other call runs
    only once its `tool_call.started` is committed, as a crash must find it then."""
    happened: list[Any] = []
    real_commit, real_call = executor_module.commit_step, GetCurrentTime.call

    async def commit_step(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(write_s)  # a slow database
        await real_commit(*args, **kwargs)
        # An event is a (type, data) pair, or a status event's type alone.
        happened.append([e if isinstance(e, str) else e[0] for e in kwargs["events"]])

    async def call(tool: GetCurrentTime, arguments: dict[str, Any]) -> str:
        happened.append("called")
        await asyncio.sleep(delay_s)
        return await real_call(tool, arguments)

    monkeypatch.setattr(executor_module, "commit_step", commit_step)
    monkeypatch.setattr(GetCurrentTime, "call", call)
    monkeypatch.setattr(GetCurrentTime, "idempotent", idempotent)
    project = await make_project(db)
    agent = await make_agent(db, project, model="test", tools=[TIME])
    created = await make_run(db, project, agent["id"], "what time is it?")
    run = await _run_to_rest(db, project, created["id"])

    assert run["status"] == "completed"
    reply = ["message.completed", "tool_call.started"]
    if joined:
        expected = ["called", [*reply, "tool_call.completed"]]
    elif idempotent:
        expected = ["called", reply, ["tool_call.completed"]]
    else:
        expected = [reply, "called", ["tool_call.completed"]]
    assert happened[: len(expected)] == expected
    assert happened.count("called") == 1 and happened[-1][-1] == "run.completed"
    log = [e.type for e in await events.list_events(db, run["id"])]
    assert log.count("tool_call.started") == log.count("tool_call.completed") == 1
    output = next(r for r in run["results"] if r["type"] == "tool_output")
    assert output["is_error"] is False and output["duration_ms"] >= round(delay_s * 1000)


@pytest.mark.parametrize("flush_interval_s", [0.005, 10.0], ids=["announced", "unannounced"])
async def test_a_tool_started_early_is_stopped_with_its_run(
    db: Database, monkeypatch: pytest.MonkeyPatch, flush_interval_s: float
) -> None:
    """The run's timeout strikes while a call started before its announcement still runs,
    either after the reply's write or still waiting to join it: the call is cancelled with
    the run, not left behind."""
    happened: list[str] = []

    async def call(tool: GetCurrentTime, arguments: dict[str, Any]) -> str:
        happened.append("called")
        try:
            await asyncio.sleep(4)
        except asyncio.CancelledError:
            happened.append("cancelled")
            raise
        return "too late"

    monkeypatch.setattr(GetCurrentTime, "call", call)
    project = await make_project(db)
    agent = await make_agent(db, project, model="test", tools=[TIME])
    created = await make_run(db, project, agent["id"], "what time is it?", timeout_s=0.3)
    run = await _run_to_rest(db, project, created["id"], flush_interval_s)
    assert run["status"] == "failed" and run["error"]["type"] == "timeout", run
    assert happened == ["called", "cancelled"]
    log = [e.type for e in await events.list_events(db, run["id"])]
    assert ("tool_call.started" in log) is (flush_interval_s < 0.3)


class _WholeReplyModel:
    """An OpenAI-compatible server that sends each streamed reply whole, in one write, after
    `delay_s`: a call to get_current_time, then (once the tool has answered) `text`."""

    def __init__(self, text: str, delay_s: float) -> None:
        self.text, self.delay_s = text, delay_s
        self.url = ""

    async def __aenter__(self) -> _WholeReplyModel:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _body(self, answered: bool) -> bytes:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n"

        if answered:
            first, *rest = self.text.split(" ")
            frames = [chunk({"content": piece}) for piece in [first, *(" " + w for w in rest)]]
            frames.append(chunk({}, "stop"))
        else:
            call = {"index": 0, "id": "call_1", "type": "function"}
            call["function"] = {"name": "get_current_time", "arguments": "{}"}
            frames = [chunk({"tool_calls": [call]}), chunk({}, "tool_calls")]
        return b"".join(frames) + b"data: [DONE]\n\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                request = orjson.loads(await reader.readexactly(length))
                body = self._body(any(m["role"] == "tool" for m in request["messages"]))
                await asyncio.sleep(self.delay_s)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
        writer.close()


async def test_deltas_that_arrive_together_are_written_together(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply that comes in one read after the model's latency is written once, its text
    in one delta: the first delta is not written alone because it came after a pause."""
    writes: list[list[str]] = []
    real_commit = executor_module.commit_step

    async def commit_step(*args: Any, **kwargs: Any) -> None:
        await real_commit(*args, **kwargs)
        writes.append([e if isinstance(e, str) else e[0] for e in kwargs["events"]])

    monkeypatch.setattr(executor_module, "commit_step", commit_step)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    async with _WholeReplyModel("one two three four five", delay_s=0.05) as model:
        project = await make_project(db)
        agent = await make_agent(
            db, project, model="openai:m", model_settings={"base_url": model.url}, tools=[TIME]
        )
        created = await make_run(db, project, agent["id"], "what time is it?")
        run = await _run_to_rest(db, project, created["id"])

    assert run["status"] == "completed", run
    assert run["last_agent_message"] == "one two three four five"
    assert writes == [
        ["message.completed", "tool_call.started", "tool_call.completed"],
        ["message.delta", "message.completed", "run.status", "run.completed"],
    ]
    log = await events.list_events(db, run["id"])
    deltas = [e.data["delta"] for e in log if e.type == "message.delta"]
    assert deltas == [run["last_agent_message"]]
