"""The benchmark's medians over rounds: sizes kept, flags true only if true in every round,
and a figure one round could not measure (None) left out of its median."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _bench() -> ModuleType:
    path = Path(__file__).parents[2] / "bench" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_medians_leave_out_a_figure_a_round_could_not_measure() -> None:
    rounds = [
        {"throughput": {"runs": 6, "runs_per_s": 200.0, "ratio": 3.0, "in_order": True}},
        {"throughput": {"runs": 6, "runs_per_s": 220.0, "ratio": None, "in_order": True}},
        {"throughput": {"runs": 6, "runs_per_s": 240.0, "ratio": 5.0, "in_order": False}},
    ]
    merged = _bench().medians(rounds)["throughput"]
    assert merged == {"runs": 6, "runs_per_s": 220.0, "ratio": 4.0, "in_order": False}
    only_none = [{"s": {"ratio": None}}, {"s": {"ratio": None}}]
    assert _bench().medians(only_none) == {"s": {"ratio": None}}
