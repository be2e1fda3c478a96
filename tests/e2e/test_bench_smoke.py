"""The benchmark script starts its processes, completes a handful of runs and reports
(here twice, with each figure the median of the two rounds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bench_script_completes_a_few_runs(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    finished = subprocess.run(
        [
            sys.executable,
            "bench/bench.py",
            "--smoke",
            "--only",
            "throughput,first_token",
            "--repeat",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-4000:] + finished.stdout[-2000:]
    report = json.loads(out.read_text())
    assert report["sqlite"]["throughput"]["runs"] == 6
    assert report["sqlite"]["throughput"]["runs_per_s"] > 0
    assert report["sqlite"]["first_token"]["p50_ms"] > 0
    assert report["sqlite"]["memory"]["idle_rss_mb"] > 0
    assert report["sqlite"]["cold_start"]["first_run_ms"] > 0
    throughput = report["sqlite"]["throughput"]
    # Other processes' CPU is read from /proc in clock ticks (10 ms): over six runs the
    # server's and the model's may round to zero. The client's own is exact.
    assert throughput["client_cpu_ms_per_run"] > 0
    assert all(throughput[f"{part}_cpu_ms_per_run"] >= 0 for part in ("server", "model"))
    rounds = [r["first_token"]["p50_ms"] for r in report["sqlite_rounds"]]
    assert len(rounds) == 2
    assert report["sqlite"]["first_token"]["p50_ms"] == round(sum(rounds) / 2, 2)
