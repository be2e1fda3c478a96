"""Scaled out on PostgreSQL: several API and worker processes on one database.

Concurrent migrations; queue wake-ups and events crossing processes over LISTEN/NOTIFY
(polling ruled out by a 30 s poll interval); 500 runs through 2 API + 3 worker processes;
workers killed with SIGKILL under load; and PostgreSQL itself restarted under load. Each
test has its own database. The restart test restarts the shared server: it stays last.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory

from agentruns.store.migrate import alembic_config
from e2e.pg_cluster import (
    FakeModelProcess,
    Load,
    check_completed_once,
    cluster_env,
    load,
    running_cluster,
    unfinished_runs,
)
from e2e.sse_reader import read_events

pytestmark = pytest.mark.postgres


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture
def model() -> Iterator[FakeModelProcess]:
    fake = FakeModelProcess(token_delay_s=0.01)
    try:
        yield fake
    finally:
        fake.stop()


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- migrations -----------------------------------------------------------------------------


def test_concurrent_migrate_processes_on_a_fresh_database(postgres_url: str) -> None:
    admin = _dsn(postgres_url).rsplit("/", 1)[0] + "/postgres"
    name = f"agentruns_fresh_{uuid.uuid4().hex[:10]}"
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    try:
        env = {**os.environ, "AGENTRUNS_DATABASE_URL": url}
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "agentruns", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        outcomes = [p.communicate(timeout=60) for p in processes]
        assert [p.returncode for p in processes] == [0] * 4, outcomes

        async def version() -> str:
            conn = await asyncpg.connect(_dsn(url))
            try:
                return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
            finally:
                await conn.close()

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert asyncio.run(version()) == head
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- notifications across processes ---------------------------------------------------------


def test_wakeups_and_events_cross_processes_without_polling(
    tmp_path: Path, postgres_url: str
) -> None:
    """A 30 s poll interval: only NOTIFY can explain a claim or an event within milliseconds."""
    fake = FakeModelProcess(token_delay_s=0.0)
    env = cluster_env(
        postgres_url, fake, poll_interval_s="30", sse_heartbeat_s="30", delta_flush_interval_s="0"
    )
    try:
        with running_cluster(tmp_path, env, apis=1, workers=1) as cluster:
            api = cluster.apis[0]
            headers = {"Authorization": f"Bearer {cluster.key}"}
            with httpx.Client(base_url=api.url, headers=headers, timeout=10) as http:
                agent = http.post("/v1/agents", json={"name": "echo", "prompt": "hi"}).json()
                agent_id = agent["data"]["id"]
                _wait_for_workers(postgres_url, 1)
                latencies = []
                for attempt in range(16):
                    run = http.post("/v1/agent-runs", json={"agent_id": agent_id}).json()["data"]
                    events = list(read_events(api.url, run["id"], cluster.key, timeout_s=10))
                    assert events[-1].type == "run.completed"
                    done = events[-1].data
                    if attempt > 0:  # the first one waits for the worker to finish starting
                        latencies.append(
                            _seconds(done["started_at"]) - _seconds(done["created_at"])
                        )

                # Live tokens: the worker process writes them, this API process streams them.
                fake.configure(token_delay_s=0.05)  # 20 words: about 1 s
                run = http.post("/v1/agent-runs", json={"agent_id": agent_id}).json()["data"]
                arrivals = [
                    (time.monotonic(), event)
                    for event in read_events(api.url, run["id"], cluster.key, timeout_s=10)
                ]
    finally:
        fake.stop()
    print(f"claim latency across processes: median {statistics.median(latencies) * 1000:.1f} ms")
    assert statistics.median(latencies) < 0.05, latencies
    assert max(latencies) < 1.0, latencies
    deltas = [t for t, e in arrivals if e.type == "message.delta"]
    assert len(deltas) >= 3
    # Spread over the streaming time, not replayed at the end.
    assert arrivals[-1][0] - deltas[0] > 0.5
    assert arrivals[-1][1].type == "run.completed"


def _wait_for_workers(database_url: str, count: int, timeout_s: float = 20) -> None:
    async def registered() -> int:
        conn = await asyncpg.connect(_dsn(database_url))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM workers"))
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout_s
    while asyncio.run(registered()) < count:
        assert time.monotonic() < deadline, "the workers did not register"
        time.sleep(0.1)
    time.sleep(0.3)  # the LISTEN connection opens alongside


# --- load ------------------------------------------------------------------------------------


async def _check_everything(load_: Load, runs: int) -> list[list[str]]:
    assert len(load_.live) == runs
    statuses = [check_completed_once(events) for events in load_.live.values()]
    # The same events, whichever API process serves them, live or replayed.
    for run_id, replays in (await load_.replay_everywhere(clients=32)).items():
        for replay in replays:
            assert [(e.id, e.type, e.data) for e in replay] == [
                (e.id, e.type, e.data) for e in load_.live[run_id]
            ]
    return statuses


def test_two_apis_three_workers_500_runs(
    tmp_path: Path, postgres_url: str, model: FakeModelProcess
) -> None:
    runs = 500
    env = cluster_env(postgres_url, model)
    with running_cluster(tmp_path, env, apis=2, workers=3) as cluster:

        async def scenario() -> list[list[str]]:
            async with load(cluster, timeout_s=150, clients=48) as load_:
                await load_.drive(runs, clients=48)
                return await _check_everything(load_, runs)

        statuses = asyncio.run(scenario())
    assert all(s == ["queued", "in_progress", "completed"] for s in statuses)
    assert model.requests() == 2 * runs  # every model call made once: no run ran twice
    assert asyncio.run(unfinished_runs(postgres_url)) == 0


def test_workers_killed_under_load_lose_nothing(
    tmp_path: Path, postgres_url: str, model: FakeModelProcess
) -> None:
    """SIGKILL a random worker every 2 s (and start a new one); 200 runs.

    The lease is 60 s, so runs come back within seconds only through dead-worker detection.
    MAX_ATTEMPTS is raised: a run may be unlucky enough to lose several workers.
    """
    runs = 200
    env = cluster_env(
        postgres_url, model, lease_seconds="60", worker_dead_after_s="2", max_attempts="20"
    )
    rng = random.Random(6)
    with running_cluster(tmp_path, env, apis=2, workers=3) as cluster:

        async def scenario() -> tuple[list[list[str]], int]:
            async with load(cluster, timeout_s=150, clients=32) as load_:
                driving = asyncio.create_task(load_.drive(runs, clients=32))
                kills = 0
                await asyncio.sleep(1.0)
                while not driving.done() and kills < 12:
                    await asyncio.to_thread(cluster.kill_random_worker, rng)
                    kills += 1
                    await asyncio.wait([driving], timeout=2.0)
                await driving
                return await _check_everything(load_, runs), kills

        statuses, kills = asyncio.run(scenario())
        logs = cluster.logs()
    requeued = sum("queued" in s[1:] for s in statuses)
    print(f"chaos: {kills} workers killed, {requeued} runs re-queued")
    assert kills >= 3, "the load ended before the chaos could start"
    assert requeued > 0, "no run was hit by a kill"
    assert "dead workers: re-queued" in logs
    assert "whose worker was lost" not in logs, "a run waited for its lease to expire"
    assert asyncio.run(unfinished_runs(postgres_url)) == 0


# --- a PostgreSQL restart (restarts the shared server: keep this test last) ------------------


def _cluster_version() -> str | None:
    root = Path("/etc/postgresql")
    versions = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    return versions[-1] if versions else None


def _restart_postgres(version: str, down_s: float) -> None:
    """Stop the server, leave it down for `down_s`, start it, wait until it accepts connections.

    A bare `restart` is over in half a second, which idle readers may not even notice.
    """
    for action in ("stop", "start"):
        subprocess.run(
            ["pg_ctlcluster", version, "main", action], check=True, capture_output=True, timeout=60
        )
        if action == "stop":
            time.sleep(down_s)
    deadline = time.monotonic() + 60
    while subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode != 0:
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        time.sleep(0.2)


def test_postgres_restart_under_load_loses_nothing(
    tmp_path: Path, postgres_url: str, model: FakeModelProcess
) -> None:
    version = _cluster_version()
    if version is None or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        pytest.skip("needs root and a local pg_ctlcluster to restart PostgreSQL")
    runs = 200
    env = cluster_env(postgres_url, model, lease_seconds="10", worker_dead_after_s="3")
    with running_cluster(tmp_path, env, apis=2, workers=3) as cluster:

        async def scenario() -> tuple[list[list[str]], int, int]:
            async with load(cluster, timeout_s=150, clients=32) as load_:
                driving = asyncio.create_task(load_.drive(runs, clients=32))
                for _ in range(150):  # until the load is in full swing (at most 15 s)
                    if len(load_.live) >= 30 or driving.done():
                        break
                    await asyncio.sleep(0.1)
                done_before = len(load_.live)
                await asyncio.to_thread(_restart_postgres, version, 2.0)
                await driving
                return await _check_everything(load_, runs), done_before, load_.retries

        statuses, done_before, retries = asyncio.run(scenario())
        for api in cluster.apis:
            assert httpx.get(api.url + "/readyz", timeout=5).status_code == 200
        handed_back = cluster.logs().count("the database failed")
    print(f"restart: {done_before} runs done before it, {retries} client retries")
    print(f"restart: {handed_back} runs handed back by their workers")
    assert done_before < runs, "the load ended before the restart"
    assert retries > 0, "the restart went unnoticed by the clients"
    assert all(s[-1] == "completed" for s in statuses)
    assert asyncio.run(unfinished_runs(postgres_url)) == 0
