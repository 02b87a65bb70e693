"""The `compare` experiment's plan: the one-at-a-time sweep and its table, and the
configuration's checks (no run is trained)."""

from __future__ import annotations

from pathlib import Path

import pytest

from camegrad_jax.rrg.compare_plan import (
    DEFAULT_SWEEP,
    TABLE_METRICS,
    CompareConfig,
    RunRecord,
    plan_runs,
)
from camegrad_jax.rrg.compare_stats import sweep_table
from camegrad_jax.rrg.optim import available_methods


def test_default_sweep_plan_is_one_at_a_time():
    config = CompareConfig(
        out_dir="unused", methods=("linear", "camegrad"), seeds=(0, 1), sweep=True
    )
    specs = plan_runs(config)
    names = sorted({spec.name for spec in specs})
    expected = ["camegrad", "linear"]
    expected += [f"camegrad_alpha{v:g}" for v in (0.1, 0.5, 0.9)]
    expected += [f"camegrad_gamma{v:g}" for v in (1.0, 2.0)]
    expected += [f"camegrad_c{v:g}" for v in (0.1, 0.3)]
    assert names == sorted(expected)
    assert len(specs) == len(expected) * 2
    for spec in specs:
        hyper = {"alpha": spec.config.alpha, "gamma": spec.config.gamma, "c": spec.config.c}
        changed = {k: v for k, v in hyper.items() if v != getattr(config.base, k)}
        assert len(changed) <= 1
        if changed:
            ((param, value),) = changed.items()
            assert spec.name == f"camegrad_{param}{value:g}" and spec.method == "camegrad"
        assert spec.run_dir == Path("unused/runs") / spec.name / f"seed{spec.seed}"

    # The table of the sweep has one row per grid value, in order, over the seeds' runs.
    records = [
        RunRecord(
            name=spec.name,
            method=spec.method,
            seed=spec.seed,
            hyper={},
            run_dir=str(spec.run_dir),
            how="trained",
            test={m: float(spec.seed) for m in TABLE_METRICS},
            selection={},
            val_ce_example_f1=[],
            train_losses=[],
            dynamics={},
            wall_seconds=0.0,
            steps=0,
        )
        for spec in specs
    ]
    table = sweep_table(records, config)
    assert {p: [row["value"] for row in table[p]] for p in DEFAULT_SWEEP} == {
        p: list(v) for p, v in DEFAULT_SWEEP.items()
    }
    assert all(row["ce_example_f1"]["n"] == 2 for p in DEFAULT_SWEEP for row in table[p])


def test_config_validation():
    with pytest.raises(ValueError, match="`methods` should be names"):
        CompareConfig(methods=("nope",))
    with pytest.raises(ValueError, match="not among `methods`"):
        CompareConfig(methods=("linear",), noise_methods=("camegrad",))
    with pytest.raises(ValueError, match=r"\['stgu'\] are training steps"):
        CompareConfig(methods=("linear", "stgu"), noise_methods=("stgu",))
    with pytest.raises(ValueError, match="`seeds`"):
        CompareConfig(seeds=(-1,))
    config = CompareConfig(methods=("linear", "pcgrad", "camegrad_no_s2"))
    assert config.noise_methods == ("linear", "camegrad_no_s2")
    assert CompareConfig().methods == available_methods()
