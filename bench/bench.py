"""Benchmarks of agentruns' orchestration overhead, with a fake model that answers instantly.

The work, per run: an agent with one server-side tool (`get_current_time`); the fake
OpenAI-compatible model answers the user with one call to that tool, then with 20 words.
So a run is 2 streamed model calls, 1 tool call and ~20 token deltas.

    python bench/bench.py --quick                # `make bench`: every scenario, small, SQLite
    python bench/bench.py                        # the full sizes, SQLite and PostgreSQL
    python bench/bench.py --db postgres --only throughput,latency

Each scenario prints its figures and all of them are written as JSON (`--out`). Every
process it starts binds 127.0.0.1 and is stopped at the end; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from agentruns.service import run_event_loop
from agentruns.testing.process import ServerProcess, free_port

console = Console()
PG_ADMIN = os.environ.get(
    "AGENTRUNS_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CONNECTIONS_PER_CLIENT = 4
TERMINAL = re.compile(rb"^event: run\.(completed|failed|cancelled)$", re.MULTILINE)
EVENT_ID = re.compile(rb"^id: ([0-9]+)$", re.MULTILINE)


@dataclass
class Sizes:
    throughput_runs: int = 300
    throughput_clients: int = 32
    latency_runs: int = 50
    first_token_runs: int = 30
    concurrency_runs: int = 1000
    concurrency_clients: int = 200
    scale_runs: int = 10_000
    fanout_subscribers: int = 2000
    scale_model_latency_s: float = 5.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(100, 16, 20, 10, 300, 100, 1000, 200)

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(6, 2, 3, 2, 6, 3, 6, 3, scale_model_latency_s=0.2)


# -- processes -------------------------------------------------------------------------------


def proc_rss_kb(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process, in KiB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def proc_cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process, from /proc: in clock ticks (10 ms), so
    only meaningful over many runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FakeModel:
    """The fake OpenAI-compatible model server, in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentruns.testing.fake_openai",
                "--port",
                str(self.port),
                "--mode",
                "bench",
                "--no-record",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()

    def configure(self, **options: Any) -> None:
        httpx.post(f"{self.url}/_control/config", json=options, timeout=5).raise_for_status()

    def reset_stats(self) -> None:
        httpx.post(f"{self.url}/_control/stats", timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_control/stats", timeout=5).json())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass
class Service:
    """One benchmarked deployment: an API process, and a worker process on PostgreSQL."""

    api: ServerProcess
    workers: list[ServerProcess] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.process.pid for p in [self.api, *self.workers] if p.process is not None]

    def rss_kb(self) -> tuple[int, int]:
        pairs = [proc_rss_kb(pid) for pid in self.pids]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)

    def worker_pid(self) -> int:
        target = self.workers[0] if self.workers else self.api
        assert target.process is not None
        return target.process.pid

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(pid) for pid in self.pids)

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            process.stop()


def pg_admin(sql: str) -> None:
    subprocess.run(["psql", PG_ADMIN, "-q", "-c", sql], check=True, capture_output=True)


@contextlib.contextmanager
def deployment(
    db: str, model: FakeModel, workdir: Path, *, separate_worker: bool = False
) -> Iterator[Service]:
    """SQLite: one `serve` process. PostgreSQL, or when `separate_worker`: `serve --no-worker`
    and one `worker` process on the same database."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        "OPENAI_BASE_URL": model.url + "/v1",
        "OPENAI_API_KEY": "sk-bench",
        "AGENTRUNS_DEFAULT_MODEL": "openai:bench",
        "AGENTRUNS_WORKER_CONCURRENCY": "20000",
    }
    database = None
    if db == "postgres":
        database = f"agentruns_bench_{uuid.uuid4().hex[:8]}"
        pg_admin(f'CREATE DATABASE "{database}"')
        env["AGENTRUNS_DATABASE_URL"] = PG_ADMIN.rsplit("/", 1)[0] + f"/{database}"
    if db == "postgres" or separate_worker:
        api = ServerProcess(workdir, env=env, args=["serve", "--no-worker"]).start()
        worker = ServerProcess(workdir, env=env, args=["worker", "--no-migrate"])
        worker.start()
        service = Service(api, [worker])
    else:
        service = Service(ServerProcess(workdir, env=env).start())
    try:
        time.sleep(1.0)  # let the worker finish starting
        yield service
    finally:
        service.stop()
        if database is not None:
            pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# -- the client side -------------------------------------------------------------------------


class Client:
    """Many httpx clients with a few pooled connections each, used in turn.

    One httpx client with hundreds of connections spends most of its CPU scanning its
    pool on every request (httpcore checks each connection), and the benchmark would
    measure that instead of the server.
    """

    def __init__(self, service: Service, connections: int) -> None:
        self.clients = [
            httpx.AsyncClient(
                base_url=service.api.url,
                headers=service.api.headers,
                timeout=httpx.Timeout(120.0),
                limits=httpx.Limits(
                    max_connections=CONNECTIONS_PER_CLIENT,
                    max_keepalive_connections=CONNECTIONS_PER_CLIENT,
                ),
            )
            for _ in range(-(-connections // CONNECTIONS_PER_CLIENT))
        ]
        self._turn = itertools.cycle(self.clients)
        self.agent_id = ""

    @property
    def http(self) -> httpx.AsyncClient:
        return next(self._turn)

    async def setup(self) -> None:
        response = await self.http.post(
            "/v1/agents",
            json={
                "name": "bench",
                "prompt": "What time is it?",
                "tools": [{"type": "builtin", "name": "get_current_time"}],
            },
        )
        response.raise_for_status()
        self.agent_id = response.json()["data"]["id"]

    async def create(self) -> str:
        response = await self.http.post("/v1/agent-runs", json={"agent_id": self.agent_id})
        response.raise_for_status()
        return str(response.json()["data"]["id"])

    async def follow(
        self, run_id: str, on_first_delta: Callable[[], None] | None = None
    ) -> list[int]:
        """Read the run's events to its terminal event; the event ids seen.

        Scans the raw bytes (with `re`, in C) instead of decoding line by line: with
        hundreds of streams the client, not the server, would otherwise be the bottleneck.
        """
        ids: list[int] = []
        pending = b""
        async with self.http.stream("GET", f"/v1/agent-runs/{run_id}/events") as response:
            async for chunk in response.aiter_raw():
                # Whole events only: keep an incomplete one for the next chunk.
                complete, separator, pending = (pending + chunk).rpartition(b"\n\n")
                if not separator:
                    pending = complete + pending
                    continue
                ids.extend(int(found) for found in EVENT_ID.findall(complete))
                if on_first_delta is not None and b"event: message.delta" in complete:
                    on_first_delta()
                    on_first_delta = None
                terminal = TERMINAL.search(complete)
                if terminal is not None:
                    if terminal.group(1) != b"completed":
                        raise RuntimeError(f"run {run_id} ended with {terminal.group(0)!r}")
                    break
        return ids

    async def run_once(self) -> float:
        return (await self.run_timed())[0]

    async def run_timed(self) -> tuple[float, str]:
        started = time.perf_counter()
        run_id = await self.create()
        await self.follow(run_id)
        return time.perf_counter() - started, run_id

    async def start_delay(self, run_id: str) -> float:
        """Seconds from the run's creation to a worker starting it (server timestamps)."""
        run = (await self.http.get(f"/v1/agent-runs/{run_id}")).json()["data"]
        created, started = (datetime.fromisoformat(run[k]) for k in ("created_at", "started_at"))
        return (started - created).total_seconds()

    async def count(self, status: str) -> bool:
        response = await self.http.get("/v1/agent-runs", params={"status": status, "limit": 1})
        return bool(response.json()["data"])

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


@contextlib.asynccontextmanager
async def client_for(service: Service, connections: int) -> AsyncIterator[Client]:
    client = Client(service, connections)
    await client.setup()
    try:
        yield client
    finally:
        await client.aclose()


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bounded(coroutines: list[Any], limit: int) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Any) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


class CpuMeter:
    """CPU time per run of the server, the benchmark client and the fake model, which share
    the machine's cores: what one of them spends, the others cannot."""

    def __init__(self, service: Service, model: FakeModel, runs: int) -> None:
        self.service, self.model, self.runs = service, model, runs
        self.per_run: dict[str, float] = {}

    def _now(self) -> tuple[float, float, float]:
        return self.service.cpu_s(), time.process_time(), proc_cpu_s(self.model.process.pid)

    def __enter__(self) -> CpuMeter:
        self._before = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        spent = [after - before for after, before in zip(self._now(), self._before, strict=True)]
        for name, seconds in zip(("server", "client", "model"), spent, strict=True):
            self.per_run[f"{name}_cpu_ms_per_run"] = ms(seconds / self.runs)
        # The fake model's code never changes, so its CPU gauges how fast the machine is at
        # the moment: rounds on a slow hour and a quiet one compare by this ratio.
        ratio = round(spent[0] / spent[2], 2) if spent[2] > 0 else None
        self.per_run["server_cpu_per_model_cpu"] = ratio


# -- scenarios -------------------------------------------------------------------------------


async def cold_start(service: Service) -> dict[str, Any]:
    """The first run a freshly started server executes, alone: it pays the one-time costs
    (the libraries a run needs are imported at first use, statements are compiled, the
    model's connection is opened), which the scenarios after it, on the same server, do not.
    """
    async with client_for(service, 1) as client:
        first = await client.run_once()
        second = await client.run_once()
    return {"first_run_ms": ms(first), "second_run_ms": ms(second)}


async def throughput(service: Service, model: FakeModel, sizes: Sizes) -> dict[str, Any]:
    async with client_for(service, sizes.throughput_clients) as client:
        with CpuMeter(service, model, sizes.throughput_runs) as cpu:
            started = time.perf_counter()
            latencies = await bounded(
                [client.run_once() for _ in range(sizes.throughput_runs)],
                sizes.throughput_clients,
            )
            wall = time.perf_counter() - started
    return {
        "runs": sizes.throughput_runs,
        "clients": sizes.throughput_clients,
        "runs_per_s": round(sizes.throughput_runs / wall, 1),
        "p50_ms": ms(percentile(latencies, 0.5)),
        "p95_ms": ms(percentile(latencies, 0.95)),
        **cpu.per_run,
    }


async def latency(service: Service, model: FakeModel, sizes: Sizes) -> dict[str, Any]:
    async with client_for(service, 2) as client:
        latencies, start_delays = [], []
        for _ in range(sizes.latency_runs):
            elapsed, run_id = await client.run_timed()
            latencies.append(elapsed)
            start_delays.append(await client.start_delay(run_id))
    return {
        "runs": sizes.latency_runs,
        "p50_ms": ms(statistics.median(latencies)),
        "p95_ms": ms(percentile(latencies, 0.95)),
        "queued_to_started_p50_ms": ms(statistics.median(start_delays)),
        "queued_to_started_p95_ms": ms(percentile(start_delays, 0.95)),
    }


async def first_token(service: Service, model: FakeModel, sizes: Sizes) -> dict[str, Any]:
    delays: list[float] = []

    def first_delta_after(started: float) -> Callable[[], None]:
        return lambda: delays.append(time.perf_counter() - started)

    async with client_for(service, 4) as client:
        for _ in range(sizes.first_token_runs):
            started = time.perf_counter()
            await client.follow(await client.create(), first_delta_after(started))
    return {
        "runs": sizes.first_token_runs,
        "p50_ms": ms(statistics.median(delays)),
        "p95_ms": ms(percentile(delays, 0.95)),
    }


async def concurrency(service: Service, model: FakeModel, sizes: Sizes) -> dict[str, Any]:
    model.configure(first_token_delay_s=0.2)
    try:
        async with client_for(service, sizes.concurrency_clients) as client:
            model.reset_stats()
            with CpuMeter(service, model, sizes.concurrency_runs) as cpu:
                started = time.perf_counter()
                await bounded(
                    [client.run_once() for _ in range(sizes.concurrency_runs)],
                    sizes.concurrency_clients,
                )
                wall = time.perf_counter() - started
            stats = model.stats()
    finally:
        model.configure(first_token_delay_s=0.0)
    return {
        "runs": sizes.concurrency_runs,
        "clients": sizes.concurrency_clients,
        "model_latency_ms": 200,
        "runs_per_s": round(sizes.concurrency_runs / wall, 1),
        "average_model_calls_in_flight": round(stats["average_in_flight"], 1),
        "peak_model_calls_in_flight": stats["peak_in_flight"],
        **cpu.per_run,
    }


async def scale(service: Service, model: FakeModel, sizes: Sizes) -> dict[str, Any]:
    """Queue every run while the worker is stopped, then start it: all are in flight at once.

    Runs on its own deployment with a separate worker process (see `run_scenarios`), so the
    figure is the worker's alone. Its idle size is taken from the same worker before it
    is stopped, on an empty queue.
    """
    worker = service.workers[0]
    assert worker.process is not None
    idle_rss, _ = proc_rss_kb(worker.process.pid)
    worker.stop()
    model.configure(first_token_delay_s=sizes.scale_model_latency_s)
    try:
        async with client_for(service, 64) as client:
            started = time.perf_counter()
            await bounded([client.create() for _ in range(sizes.scale_runs)], 64)
            created = time.perf_counter() - started
            model.reset_stats()
            worker.start()
            assert worker.process is not None
            started = time.perf_counter()
            peak_rss = idle_rss
            deadline = started + 600
            while time.perf_counter() < deadline:
                peak_rss = max(peak_rss, proc_rss_kb(worker.process.pid)[0])
                if not await client.count("queued") and not await client.count("in_progress"):
                    break
                await asyncio.sleep(0.25)
            drained = time.perf_counter() - started
            stats = model.stats()
    finally:
        model.configure(first_token_delay_s=0.0)
    return {
        "runs": sizes.scale_runs,
        "model_latency_ms": ms(sizes.scale_model_latency_s),
        "create_s": round(created, 2),
        "drain_s": round(drained, 2),
        "peak_model_calls_in_flight": stats["peak_in_flight"],
        "worker_idle_rss_mb": round(idle_rss / 1024, 1),
        "worker_peak_rss_mb": round(peak_rss / 1024, 1),
        "kb_per_in_flight_run": round((peak_rss - idle_rss) / sizes.scale_runs, 1),
    }


async def fanout(service: Service, model: FakeModel, sizes: Sizes) -> dict[str, Any]:
    """Every run is queued before its subscriber connects; the API process serves only them."""
    api = service.api.process
    assert api is not None
    model.configure(first_token_delay_s=1.0, token_delay_s=0.05)
    try:
        async with client_for(service, sizes.fanout_subscribers + 16) as client:
            run_ids = await bounded([client.create() for _ in range(sizes.fanout_subscribers)], 32)
            rss_before, _ = proc_rss_kb(api.pid)
            peak = rss_before
            started = time.perf_counter()

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, proc_rss_kb(api.pid)[0])
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample())
            try:
                streams = await asyncio.gather(*(client.follow(run_id) for run_id in run_ids))
            finally:
                sampler.cancel()
            wall = time.perf_counter() - started
    finally:
        model.configure(first_token_delay_s=0.0, token_delay_s=0.0)
    complete = all(ids == list(range(1, len(ids) + 1)) for ids in streams)
    events = sum(len(ids) for ids in streams)
    return {
        "subscribers": sizes.fanout_subscribers,
        "every_event_delivered_in_order": complete,
        "events": events,
        "events_per_s": round(events / wall, 1),
        "api_rss_before_mb": round(rss_before / 1024, 1),
        "api_peak_rss_mb": round(peak / 1024, 1),
        "kb_per_subscriber": round((peak - rss_before) / sizes.fanout_subscribers, 1),
    }


# Scenarios that measure one process's memory get a fresh deployment with the worker in a
# process of its own: the API's growth is then the subscribers' alone, the worker's the
# in-flight runs'.
ISOLATED = ("scale", "fanout")

SCENARIOS = {
    "throughput": throughput,
    "latency": latency,
    "first_token": first_token,
    "concurrency": concurrency,
    "scale": scale,
    "fanout": fanout,
}


@contextlib.contextmanager
def profiled(service: Service, profile_dir: Path | None, name: str) -> Iterator[None]:
    """Sample the worker (the server on SQLite) with py-spy while a scenario runs."""
    if profile_dir is None:
        yield
        return
    profile_dir.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(service.worker_pid()),
            "--format",
            "raw",
            "--rate",
            "250",
            "--output",
            str(profile_dir / f"{name}.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)


async def run_scenarios(
    db: str, names: list[str], sizes: Sizes, profile_dir: Path | None = None
) -> dict[str, Any]:
    model = FakeModel()
    results: dict[str, Any] = {}
    shared = [name for name in names if name not in ISOLATED]
    try:
        with tempfile.TemporaryDirectory(prefix="agentruns-bench-") as tmp:
            if shared:
                with deployment(db, model, Path(tmp) / "shared") as service:
                    idle_rss, _ = service.rss_kb()
                    results["memory"] = {"idle_rss_mb": round(idle_rss / 1024, 1)}
                    results["cold_start"] = await cold_start(service)
                    console.print(f"[bold]{db}[/] cold start {json.dumps(results['cold_start'])}")
                    for name in shared:
                        await run_scenario(db, name, service, model, sizes, results, profile_dir)
                    rss, peak = service.rss_kb()
                    results["memory"].update(
                        after_runs_rss_mb=round(rss / 1024, 1), peak_rss_mb=round(peak / 1024, 1)
                    )
                    console.print(f"[bold]{db}[/] memory {json.dumps(results['memory'])}")
            for name in [name for name in names if name in ISOLATED]:
                with deployment(db, model, Path(tmp) / name, separate_worker=True) as service:
                    await run_scenario(db, name, service, model, sizes, results, profile_dir)
    finally:
        model.stop()
    return results


async def run_scenario(
    db: str,
    name: str,
    service: Service,
    model: FakeModel,
    sizes: Sizes,
    results: dict[str, Any],
    profile_dir: Path | None,
) -> None:
    console.print(f"[bold]{db}[/] {name} ...")
    # The garbage of the scenarios before (the scale scenario's 10,000 runs, the fan-out's
    # 2,000 streams) is collected now, not in the middle of this one, and what is alive now
    # is left out of the collections during it: a full collection of this process took up
    # to 0.7 s, which was the tail of a throughput round, the client's and not the server's.
    gc.collect()
    gc.freeze()
    try:
        with profiled(service, profile_dir, f"{db}-{name}"):
            results[name] = await SCENARIOS[name](service, model, sizes)
    finally:
        gc.unfreeze()
    console.print(f"  {json.dumps(results[name])}")


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each scenario's figures, each the median over the rounds (a flag: true in every one)."""
    merged: dict[str, Any] = {}
    for scenario, figures in rounds[0].items():
        merged[scenario] = {}
        for key, value in figures.items():
            values = [r[scenario][key] for r in rounds]
            # A round may not have measured a figure (None: a ratio to a CPU time too small
            # to read, in a tiny run); the median is then of the rounds that did.
            numbers = [v for v in values if isinstance(v, int | float)]
            if isinstance(value, bool):
                merged[scenario][key] = all(values)
            elif all(v == value for v in values):  # a size, the same in every round
                merged[scenario][key] = value
            elif numbers:
                merged[scenario][key] = round(statistics.median(numbers), 2)
            else:
                merged[scenario][key] = value
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    parser.add_argument("--smoke", action="store_true", help="a handful of runs (tests)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default=None)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run everything N times on fresh deployments; report each figure's median",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write a py-spy profile (collapsed stacks) of each scenario into this folder",
    )
    args = parser.parse_args(argv)
    sizes = Sizes.smoke() if args.smoke else Sizes.quick() if args.quick else Sizes()
    db = args.db or ("sqlite" if args.quick or args.smoke else "both")
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - SCENARIOS.keys()
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "command": " ".join(["python", "bench/bench.py", *(argv or sys.argv[1:])]),
        "sizes": sizes.__dict__,
    }
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    for database in ("sqlite", "postgres") if db == "both" else (db,):
        rounds = []
        for number in range(args.repeat):
            if args.repeat > 1:
                console.rule(f"{database}: round {number + 1} of {args.repeat}")
            # uvloop, as the server uses: on asyncio's own loop the client took a third more
            # CPU, and it shares the machine's two cores with the server it measures.
            rounds.append(run_event_loop(run_scenarios(database, names, sizes, args.profile)))
        report[database] = medians(rounds)
        if args.repeat > 1:
            report[f"{database}_rounds"] = rounds
            console.print(f"[bold]{database}[/] medians of {args.repeat} rounds:")
            for name, figures in report[database].items():
                console.print(f"  {name} {json.dumps(figures)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
