"""Does the server's memory grow with the runs it has completed? Many runs through one server.

The `serve` process (SQLite) or the API and worker processes (PostgreSQL) run `--runs`
runs of the benchmark's work, `--clients` at a time, and their RSS is read after every
`--every` runs. A server that keeps nothing per completed run levels off: the figure to read
is the growth per run over the second half, once caches (SQLite's page cache, the
allocator's arenas) have filled.

    python bench/soak.py                          # 20,000 runs on SQLite, a few minutes
    python bench/soak.py --db postgres --runs 10000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench import FakeModel, Service, bounded, client_for, console, deployment

from agentruns.service import run_event_loop


async def soak(service: Service, runs: int, clients: int, every: int) -> list[tuple[int, float]]:
    samples = [(0, service.rss_kb()[0] / 1024)]
    async with client_for(service, clients) as client:
        await bounded([client.run_once() for _ in range(clients)], clients)  # warm up
        samples = [(0, service.rss_kb()[0] / 1024)]
        started = time.perf_counter()
        for done in range(every, runs + 1, every):
            await bounded([client.run_once() for _ in range(every)], clients)
            rss_mb = service.rss_kb()[0] / 1024
            samples.append((done, rss_mb))
            rate = done / (time.perf_counter() - started)
            console.print(f"{done:>7,} runs  RSS {rss_mb:7.1f} MB  ({rate:.0f} runs/s)")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--every", type=int, default=2_000)
    args = parser.parse_args()
    model = FakeModel()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="agentruns-soak-") as tmp,
            deployment(args.db, model, Path(tmp)) as service,
        ):
            samples = run_event_loop(soak(service, args.runs, args.clients, args.every))
    finally:
        model.stop()
    (first_runs, first_mb), (half_runs, half_mb), (last_runs, last_mb) = (
        samples[0],
        samples[len(samples) // 2],
        samples[-1],
    )
    whole = (last_mb - first_mb) * 1024 / max(1, last_runs - first_runs)
    second_half = (last_mb - half_mb) * 1024 / max(1, last_runs - half_runs)
    console.print(
        f"RSS {first_mb:.1f} -> {last_mb:.1f} MB over {last_runs:,} runs: "
        f"{whole:.2f} KB per run in all, {second_half:.2f} KB per run over the second half"
    )


if __name__ == "__main__":
    main()
