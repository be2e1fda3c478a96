"""The benchmark script starts its processes, completes a handful of runs and reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bench_script_completes_a_few_runs(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    subprocess.run(
        [
            sys.executable,
            "bench/bench.py",
            "--smoke",
            "--only",
            "throughput,first_token",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    report = json.loads(out.read_text())
    assert report["sqlite"]["throughput"]["runs"] == 6
    assert report["sqlite"]["throughput"]["runs_per_s"] > 0
    assert report["sqlite"]["first_token"]["p50_ms"] > 0
    assert report["sqlite"]["memory"]["idle_rss_mb"] > 0
