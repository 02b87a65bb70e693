"""The benchmark scripts run end to end at tiny sizes and report finite ratios (slow: they
compile every contender; `make test-slow`). They measure nothing: the figures are in
`benchmarks/results-*.json`, docs/performance.md and the README."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run_benchmarks.py"


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports_finite_ratios(tmp_path):
    spec = importlib.util.spec_from_file_location("run_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(
        [
            "--quick",
            "--sections",
            "dual,flat,gram,pytree,family,train,solvers,lowmem",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert (tmp_path / "r.json").exists()
    ratios = [row["over_linear"] for key in ("flat", "pytree", "family") for row in results[key]]
    ratios += [ratio for row in results["gram"] for ratio in row["over_linear"].values()]
    ratios += [row["speedup_in_jit"] for row in results["dual"] if "speedup_in_jit" in row]
    ratios += [results["train"][k] for k in ("camegrad_over_linear", "camegrad_over_one_backward")]
    ratios += [row["over_linear"] for row in results["solvers"]]
    ratios += [row[key] for row in results["lowmem"] for key in ("peak_ratio", "time_ratio")]
    assert ratios and all(math.isfinite(r) and r > 0 for r in ratios)
    # The dual solver reaches SLSQP's objective (up to float32 round-off) on every problem.
    assert all(row["objective_advantage_min"] > -1e-5 for row in results["dual"])


BREAKDOWN_SCRIPT = SCRIPT.with_name("update_breakdown.py")


@pytest.mark.slow
def test_update_breakdown_runs_and_reports_finite_ratios(tmp_path):
    spec = importlib.util.spec_from_file_location("update_breakdown", BREAKDOWN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--tasks", "3", "--sizes", "40000", "--rounds", "3", "--json", str(tmp_path / "b.json")]
    (row,) = module.main(argv)["rows"]
    assert "camegrad update (XLA Gram)" in row["over_linear"]
    assert all(math.isfinite(r) and r > 0 for r in row["over_linear"].values())
    assert (tmp_path / "b.json").exists()
