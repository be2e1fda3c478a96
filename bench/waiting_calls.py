"""Memory of a run waiting for its model's first token, measured in a worker in this process.

The scale scenario of `bench.py` measures a worker process from outside, and its peak
also holds runs queued for a commit. This one measures the waiting state alone: it queues
N runs through a `serve --no-worker` process, starts a worker here against the same
database while the fake model holds every first token for a minute, waits until all N
calls are open, and reports the growth of this process's RSS per run. With `--trace`
it also lists, from tracemalloc, the source lines whose allocations the waiting runs
hold (tracemalloc's own bookkeeping then inflates the RSS figure; the traced figure is
the one to read).

    python bench/waiting_calls.py                  # 2,000 runs
    python bench/waiting_calls.py --runs 1000 --trace
    python bench/waiting_calls.py --after-tool     # waiting for the second call instead
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench import FakeModel, Service, bounded, client_for, proc_rss_kb

from agentruns.service import run_event_loop
from agentruns.testing.process import ServerProcess


async def measure(model: FakeModel, runs: int, trace: bool, top: int) -> None:
    from agentruns.api.app import build_presence, build_worker, model_http_client
    from agentruns.config import Settings
    from agentruns.heap import freeze_startup_heap
    from agentruns.store.database import Database

    settings = Settings()
    db = Database.from_settings(settings)
    await db.start()
    presence = build_presence(db, settings)
    await presence.start()
    async with model_http_client(settings) as http:
        worker = build_worker(db, settings, http, worker_id=presence.worker_id)
        freeze_startup_heap()
        if trace:
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
        idle_kb = proc_rss_kb(os.getpid())[0]
        model.reset_stats()
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 50
        in_flight = 0
        while time.monotonic() < deadline and in_flight < runs:
            await asyncio.sleep(0.5)
            in_flight = (await asyncio.to_thread(model.stats))["in_flight"]
        await asyncio.sleep(1.0)  # let the last ones settle into their wait
        gc.collect()
        grown_kb = proc_rss_kb(os.getpid())[0] - idle_kb
        print(f"{in_flight} model calls open; RSS +{grown_kb / runs:.2f} KB per waiting run")
        if trace:
            diff = tracemalloc.take_snapshot().compare_to(before, "lineno")
            traced = sum(d.size_diff for d in diff)
            print(f"traced: {traced / runs / 1024:.2f} KB per waiting run; the largest lines:")
            for d in diff[:top]:
                where = d.traceback[-1]
                print(
                    f"  {d.size_diff / runs:7.0f} B  {d.count_diff / runs:5.2f} objects"
                    f"  {where.filename.split('site-packages/')[-1]}:{where.lineno}"
                )
        kinds = Counter(type(o).__name__ for o in gc.get_objects())
        common = ", ".join(f"{k} {v / runs:.1f}" for k, v in kinds.most_common(12))
        print(f"objects per waiting run (tracked by the GC): {common}")
        worker.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await presence.stop()
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--trace", action="store_true", help="tracemalloc, by source line")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--after-tool",
        action="store_true",
        help="hold the second model call (after the tool) instead of the first",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agentruns-waiting-"))
    model = FakeModel()
    env = {
        "OPENAI_BASE_URL": model.url + "/v1",
        "OPENAI_API_KEY": "sk-bench",
        "AGENTRUNS_DEFAULT_MODEL": "openai:bench",
        "AGENTRUNS_WORKER_CONCURRENCY": str(args.runs + 100),
        "AGENTRUNS_DATABASE_URL": f"sqlite:///{workdir / 'agentruns.db'}",
    }
    api = ServerProcess(workdir, env=env, args=["serve", "--no-worker"]).start()
    try:
        if args.after_tool:
            model.configure(first_token_delay_s=0, first_token_delay_after_tool_s=60)
        else:
            model.configure(first_token_delay_s=60)

        async def queue() -> None:
            async with client_for(Service(api), 32) as client:
                await bounded([client.create() for _ in range(args.runs)], 32)

        run_event_loop(queue())
        print(f"queued {args.runs} runs")
        os.environ.update(env)
        run_event_loop(measure(model, args.runs, args.trace, args.top))
    finally:
        api.stop()
        model.stop()


if __name__ == "__main__":
    main()
