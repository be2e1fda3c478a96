"""A scaled-out deployment for the PostgreSQL tests: API and worker processes on one database,
a fake model in its own process, and clients that create on one API and stream on another."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from agentruns.testing.fake_provider import BENCH_ANSWER
from agentruns.testing.process import ServerProcess, free_port

TERMINAL = ("run.completed", "run.failed", "run.cancelled")


class FakeModelProcess:
    """The fake OpenAI-compatible model (tool call, then 20 words) in its own process."""

    def __init__(self, *, token_delay_s: float, mode: str = "bench") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "agentruns.testing.fake_openai", "--port"]
        command += [str(self.port), "--mode", mode, "--no-record"]
        command += ["--token-delay-s", str(token_delay_s)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.process.stdout.readline()  # "listening on ...": it is up

    def configure(self, **options: Any) -> None:
        httpx.post(f"{self.url}/_control/config", json=options, timeout=5).raise_for_status()

    def requests(self) -> int:
        return int(httpx.get(f"{self.url}/_control/stats", timeout=5).json()["requests"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def cluster_env(database_url: str, model: FakeModelProcess, **settings: str) -> dict[str, str]:
    return {
        "AGENTRUNS_DATABASE_URL": database_url,
        "OPENAI_BASE_URL": model.url + "/v1",
        "OPENAI_API_KEY": "sk-fake",
        "AGENTRUNS_DEFAULT_MODEL": "openai:fake-model",
        "AGENTRUNS_POLL_INTERVAL_S": "1",
        "AGENTRUNS_SSE_HEARTBEAT_S": "2",
        **{f"AGENTRUNS_{name.upper()}": value for name, value in settings.items()},
    }


@dataclass
class Cluster:
    """`serve --no-worker` processes and `worker` processes sharing one PostgreSQL database."""

    workdir: Path
    env: dict[str, str]
    apis: list[ServerProcess] = field(default_factory=list)
    workers: list[ServerProcess] = field(default_factory=list)
    # Every process ever started, killed ones included: their logs tell what happened.
    everyone: list[ServerProcess] = field(default_factory=list)

    def start(self, apis: int, workers: int) -> Cluster:
        for index in range(apis):
            # The first migrates and creates the key; the others are told not to migrate.
            args = ["serve", "--no-worker"] + (["--no-migrate"] if index else [])
            api = ServerProcess(self.workdir, env=self.env, args=args)
            if self.apis:
                api.api_key = self.apis[0].api_key
            self.apis.append(api.start())
            self.everyone.append(api)
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> ServerProcess:
        worker = ServerProcess(self.workdir, env=self.env, args=["worker", "--no-migrate"])
        self.workers.append(worker.start())
        self.everyone.append(worker)
        return worker

    def kill_random_worker(self, rng: random.Random) -> None:
        """SIGKILL a worker (no shutdown code runs) and start a fresh one in its place."""
        victim = self.workers.pop(rng.randrange(len(self.workers)))
        victim.kill()
        self.add_worker()

    @property
    def key(self) -> str:
        assert self.apis and self.apis[0].api_key is not None
        return self.apis[0].api_key

    def logs(self) -> str:
        return "\n".join(process.logs() for process in self.everyone)

    def stop(self) -> None:
        for process in [*self.workers, *self.apis]:
            process.stop()


@contextlib.contextmanager
def running_cluster(
    workdir: Path, env: dict[str, str], *, apis: int, workers: int
) -> Iterator[Cluster]:
    cluster = Cluster(workdir, env)
    try:
        yield cluster.start(apis, workers)
    finally:
        cluster.stop()


@dataclass
class Event:
    id: int
    type: str
    data: Any


@dataclass
class Load:
    """Clients driving runs through the cluster; what they saw, and how often they retried."""

    cluster: Cluster
    http: httpx.AsyncClient
    deadline: float
    retries: int = 0
    live: dict[str, list[Event]] = field(default_factory=dict)

    def url(self, index: int) -> str:
        return self.cluster.apis[index % len(self.cluster.apis)].url

    async def create_agent(self) -> str:
        body = {
            "name": "clock",
            "prompt": "What time is it?",
            "tools": [{"type": "builtin", "name": "get_current_time"}],
        }
        response = await self.http.post(self.url(0) + "/v1/agents", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["data"]["id"])

    async def create_run(self, api: int, agent_id: str) -> str:
        """Create a run, retrying (same Idempotency-Key: never twice) while the service is down."""
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        while True:
            try:
                response = await self.http.post(
                    self.url(api) + "/v1/agent-runs",
                    json={"agent_id": agent_id},
                    headers=headers,
                )
                if response.status_code in (200, 201):
                    return str(response.json()["data"]["id"])
                assert response.status_code >= 500, response.text
            except httpx.TransportError:
                pass
            await self._retry_pause()

    async def follow(self, api: int, run_id: str) -> list[Event]:
        """The run's events to its terminal one, reconnecting with Last-Event-ID if cut off."""
        events: list[Event] = []
        while True:
            headers = {"Last-Event-ID": str(events[-1].id)} if events else {}
            url = f"{self.url(api)}/v1/agent-runs/{run_id}/events"
            try:
                async with self.http.stream("GET", url, headers=headers) as response:
                    if response.status_code == 200:
                        async for event in _parse(response):
                            events.append(event)
                            if event.type in TERMINAL:
                                return events
            except httpx.TransportError:
                pass
            await self._retry_pause()

    async def _retry_pause(self) -> None:
        assert time.monotonic() < self.deadline, "the service did not recover in time"
        self.retries += 1
        await asyncio.sleep(0.2)

    async def drive(self, runs: int, clients: int) -> None:
        """`runs` runs, each created on one API process and streamed from the next."""
        agent_id = await self.create_agent()
        semaphore = asyncio.Semaphore(clients)

        async def one(index: int) -> None:
            async with semaphore:
                run_id = await self.create_run(index, agent_id)
                self.live[run_id] = await self.follow(index + 1, run_id)

        await asyncio.gather(*(one(i) for i in range(runs)))

    async def replay_everywhere(self, clients: int) -> dict[str, list[list[Event]]]:
        """Every run's events read again from each API process."""
        semaphore = asyncio.Semaphore(clients)

        async def replay(run_id: str) -> tuple[str, list[list[Event]]]:
            async with semaphore:
                apis = range(len(self.cluster.apis))
                return run_id, [await self.follow(api, run_id) for api in apis]

        return dict(await asyncio.gather(*(replay(run_id) for run_id in self.live)))


@contextlib.asynccontextmanager
async def load(cluster: Cluster, *, timeout_s: float, clients: int) -> AsyncIterator[Load]:
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {cluster.key}"},
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=limits,
    ) as http:
        yield Load(cluster, http, time.monotonic() + timeout_s)


async def _parse(response: httpx.Response) -> AsyncIterator[Event]:
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                yield Event(int(fields["id"]), fields["event"], orjson.loads(fields["data"]))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def check_completed_once(events: list[Event]) -> list[str]:
    """Assert one clean completion (whatever re-queues happened); the run's statuses."""
    assert [e.id for e in events] == list(range(1, len(events) + 1)), "event ids have gaps"
    types = [e.type for e in events]
    assert types[-1] == "run.completed" and types.count("run.completed") == 1, types
    # One assistant message with the tool call, one with the answer: none repeated.
    assert types.count("message.completed") == 2, types
    kept: list[str] = []
    for event in events:
        if event.type == "message.discarded":
            kept.clear()
        elif event.type == "message.delta":
            kept.append(event.data["delta"])
    assert "".join(kept) == BENCH_ANSWER
    run = events[-1].data
    assert run["last_agent_message"] == BENCH_ANSWER and run["error"] is None
    assert [r["type"] for r in run["results"]] == ["tool_call", "tool_output", "message"]
    return [e.data["status"] for e in events if e.type == "run.status"]


async def unfinished_runs(database_url: str) -> int:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql", 1))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM runs WHERE status <> 'completed'"))
    finally:
        await conn.close()
