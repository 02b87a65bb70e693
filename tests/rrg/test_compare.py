"""Tests of the method comparison (`camegrad_jax.rrg.compare`, ``camegrad-rrg compare``) and of
its statistics (`camegrad_jax.rrg.stats`).

One tiny ``compare --quick --sweep`` (linear and CAME-Grad, two seeds, a one-point sweep) runs
once per module through the command line; most tests read its output folder.
"""

from __future__ import annotations

import doctest
import itertools
import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from rrg_tiny import (
    COMPILATION_CACHE_DIR,
    TINY_DATA_FLAGS,
    TINY_FLAGS,
    Interrupted,
    interrupt_save,
    tiny_config,
)

from camegrad_jax.rrg import (
    compare,
    compare_figures,
    compare_noise,
    compare_plan,
    compare_stats,
    compare_tables,
    results,
    stats,
)
from camegrad_jax.rrg.cli import main
from camegrad_jax.rrg.compare_plan import (
    DEFAULT_SWEEP,
    SUMMARY_FILE,
    TABLE_METRICS,
    CompareConfig,
    RunRecord,
    plan_runs,
)
from camegrad_jax.rrg.compare_stats import min_seeds_for_significance, sweep_table
from camegrad_jax.rrg.experiment import build_setup, load_data, update_samples
from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.observations import POSITIVE
from camegrad_jax.rrg.optim import available_methods
from camegrad_jax.rrg.results import STEP_LOG_FILE
from camegrad_jax.rrg.stats import covariance_trace, paired_bootstrap_ci, sign_flip_p_value

# Every test metric a run records (see `camegrad_jax.rrg.train.train`).
pytestmark = pytest.mark.usefixtures("compilation_cache")

TEST_METRIC_KEYS = {
    *(f"BLEU_{n}" for n in range(1, 5)),
    "METEOR",
    "ROUGE_L",
    *(f"ce_{p}_{m}" for p in ("example", "label_macro") for m in ("precision", "recall", "f1")),
    "ce_example_avg",
    "ce_label_macro_avg",
    *(f"aux_auc_{a}" for a in ("macro", "micro", "macro_num_labels")),
    *(f"aux_{m}_{a}" for m in ("precision", "recall", "f1") for a in ("macro", "micro")),
    "num_reports",
    "mean_generated_words",
}
TABLE_FILES = [f"{name}.{ext}" for name in ("table", "paired", "dynamics") for ext in ("md", "csv")]
TABLE_FILES += ["table.json", "paired.json", "dynamics.json"]
FIGURES = ["cosine_hist.png", "collapse_ratio.png", "noise_trace.png", "training_curves.png"]
SWEEP_FILES = ["sweep.md", "sweep.csv", "sweep.json", "sweep.png"]


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory) -> Path:
    """A tiny ``compare --quick --sweep`` through the command line."""
    out = tmp_path_factory.mktemp("compare")
    argv = ["compare", "--quick", "--out", str(out), *TINY_FLAGS, *TINY_DATA_FLAGS]
    argv += ["--compilation-cache", str(COMPILATION_CACHE_DIR), "--noise-batches", "3"]
    argv += ["--bootstrap-resamples", "500", "--sweep", "--sweep-alpha", "0.2,0.5"]
    argv += ["--sweep-gamma", "1.5", "--sweep-c", "0.5"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def summary(quick_out) -> dict:
    return json.loads((quick_out / SUMMARY_FILE).read_text())


def test_quick_writes_every_table_and_figure(quick_out, summary):
    for name in [*TABLE_FILES, *FIGURES, *SWEEP_FILES, SUMMARY_FILE]:
        path = quick_out / name
        assert path.is_file() and path.stat().st_size > 0, name
    for figure in [*FIGURES, "sweep.png"]:
        assert (quick_out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert set(summary["files"]) == set(TABLE_FILES + FIGURES + SWEEP_FILES)

    table = (quick_out / "table.md").read_text()
    for column in ("Prec.", "Rec.", "F1", "B-1", "B-4", "MTR", "R-L", "CE Avg."):
        assert f" {column} |" in table, column
    assert "example-based" in table and "label-macro" in table
    assert "| linear |" in table and "| camegrad |" in table and " ± " in table
    header = (quick_out / "table.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["method", "num_seeds"]
    assert {f"{m}_{s}" for m in TABLE_METRICS for s in ("mean", "std")} == set(header[2:])


def test_summary_holds_every_metric_of_every_run(quick_out, summary):
    assert summary["config"]["methods"] == ["linear", "camegrad"]
    assert summary["config"]["seeds"] == [0, 1]
    runs = {(r["name"], r["seed"]) for r in summary["runs"]}
    expected = {(m, s) for m in ("linear", "camegrad", "camegrad_alpha0.5") for s in (0, 1)}
    assert runs == expected
    for run in summary["runs"]:
        assert TEST_METRIC_KEYS <= set(run["test"]), run["name"]
        assert run["test"]["num_reports"] == 16
        assert len(run["val_ce_example_f1"]) == 2 and len(run["train_losses"]) == 2
        dynamics = run["dynamics"]
        assert dynamics["num_steps"] == 16
        # Recomputed from the run's per-step log, by other fields than the summary reads.
        log = np.load(quick_out / "runs" / run["name"] / f"seed{run['seed']}" / STEP_LOG_FILE)
        conflict = np.mean(log["cosine_similarity"] < 0)
        assert dynamics["conflict_share"] == pytest.approx(conflict)
        collapse = np.mean(log["joint_norm"] / log["task_norms"].sum(axis=1))
        assert dynamics["collapse_ratio_mean"] == pytest.approx(collapse, rel=1e-5)
        assert 0.0 < dynamics["collapse_ratio_mean"] <= 1.0 + 1e-6
    for name in ("linear", "camegrad"):
        assert set(summary["table"][name]) == {*TABLE_METRICS, "seeds"}
        entry = summary["table"][name]["ce_example_f1"]
        values = [r["test"]["ce_example_f1"] for r in summary["runs"] if r["name"] == name]
        assert entry["values"] == values and entry["mean"] == pytest.approx(np.mean(values))
    # The best constant report shares findings with the test references (checked against an
    # independent computation in `test_constant_report_is_the_best_on_train_scored_on_test`).
    constant = summary["constant_report"]
    assert 0.0 < constant["metrics"]["ce_example_f1"] <= 1.0
    assert 0.0 < constant["train_ce_example_f1"] <= 1.0


def positive_sets(reports):
    return [set(np.flatnonzero(row == POSITIVE)) for row in label_reports(list(reports))]


def mean_example_f1(report, references):
    """Example-based CE F1 of one report written for every reference, as sets: per reference
    2|S ∩ G| / (|S| + |G|), and 0 when neither has a positive finding."""
    (written,) = positive_sets([report])
    scores = [
        2 * len(written & gold) / (len(written) + len(gold)) if written or gold else 0.0
        for gold in positive_sets(references)
    ]
    return float(np.mean(scores))


def test_constant_report_is_the_best_on_train_scored_on_test(tmp_path):
    dataset = load_data(tiny_config(tmp_path))
    train, test = (
        [dataset.tokenizer.clean(r) for r in dataset.splits[split].reports]
        for split in ("train", "test")
    )
    baseline = compare.constant_report_baseline(dataset)
    scores = {report: mean_example_f1(report, train) for report in set(train)}
    assert baseline["report"] in scores
    assert baseline["train_ce_example_f1"] == pytest.approx(max(scores.values()))
    assert scores[baseline["report"]] == pytest.approx(max(scores.values()))
    expected = mean_example_f1(baseline["report"], test)
    assert expected > 0.0
    assert baseline["metrics"]["ce_example_f1"] == pytest.approx(expected)


def test_paired_comparison_against_linear(summary):
    paired = summary["paired"]
    assert set(paired) == {"camegrad"}
    assert set(paired["camegrad"]) == set(TABLE_METRICS) - {"METEOR"}  # METEOR is off
    linear = {r["seed"]: r["test"] for r in summary["runs"] if r["name"] == "linear"}
    for metric, entry in paired["camegrad"].items():
        runs = [r for r in summary["runs"] if r["name"] == "camegrad"]
        expected = [r["test"][metric] - linear[r["seed"]][metric] for r in runs]
        np.testing.assert_allclose(entry["differences"], expected)
        assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
        assert entry["sentence"].startswith(f"camegrad − linear on {metric}: ")
        # Two seeds: the exact sign-flip test can never go below p = 2^(1 - 2) = 0.5, so no
        # verdict is given whatever the differences, and the sentence says so.
        assert entry["p_sign_flip"] >= 0.5
        assert entry["verdict"] == "insufficient"
        assert "2 seeds cannot establish a difference" in entry["sentence"]
        assert "holds" not in entry["sentence"]


def test_noise_trace_is_measured_at_fixed_parameters(summary):
    for run in summary["runs"]:
        if run["name"] == "camegrad_alpha0.5":
            assert "noise" not in run
            continue
        noise = run["noise"]
        assert noise["num_minibatches"] == 3 and noise["batch_size"] == 8
        assert 0.0 < noise["trace_shared"] < noise["trace_all"]
        assert 0 < noise["num_shared_params"] < noise["num_params"]
    at_linear = summary["noise_at_baseline_parameters"]
    assert set(at_linear) == {"0", "1"}
    linear = {r["seed"]: r for r in summary["runs"] if r["name"] == "linear"}
    for seed, by_method in at_linear.items():
        assert by_method["linear"]["trace_all"] == linear[int(seed)]["noise"]["trace_all"]
        assert by_method["camegrad"]["trace_shared"] > 0
    dynamics = summary["dynamics"]
    for name in ("linear", "camegrad"):
        for key in ("noise_trace_shared", "noise_trace_all", "noise_trace_shared_at_baseline"):
            assert dynamics[name][key]["n"] == 2, (name, key)


def test_sweep_table_has_the_requested_grid(quick_out, summary):
    sweep = summary["sweep"]
    assert {p: [row["value"] for row in sweep[p]] for p in DEFAULT_SWEEP} == {
        "alpha": [0.2, 0.5],
        "gamma": [1.5],
        "c": [0.5],
    }
    assert [row["name"] for row in sweep["alpha"]] == ["camegrad", "camegrad_alpha0.5"]
    assert sweep["fixed"] == {"alpha": 0.2, "gamma": 1.5, "c": 0.5}
    lines = (quick_out / "sweep.md").read_text().splitlines()
    rows = [line.split(" | ")[:2] for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [["| alpha", "0.2"], ["| alpha", "0.5"], ["| gamma", "1.5"], ["| c", "0.5"]]
    csv_rows = (quick_out / "sweep.csv").read_text().splitlines()[1:]
    assert [row.split(",")[:2] for row in csv_rows] == [
        ["alpha", "0.2"],
        ["alpha", "0.5"],
        ["gamma", "1.5"],
        ["c", "0.5"],
    ]


def test_rerun_reuses_finished_runs(quick_out, summary, capsys, tmp_path):
    moved = tmp_path / "moved"  # A moved output folder is still reused.
    shutil.copytree(quick_out, moved)
    argv = ["compare", "--quick", "--out", str(moved), *TINY_FLAGS, *TINY_DATA_FLAGS]
    argv += ["--compilation-cache", str(COMPILATION_CACHE_DIR), "--noise-batches", "3"]
    argv += ["--bootstrap-resamples", "500"]
    assert main(argv) == 0
    again = json.loads((moved / SUMMARY_FILE).read_text())
    assert {r["how"] for r in again["runs"]} == {"reused"}
    assert again["table"] == summary["table"]
    assert again["paired"] == summary["paired"]
    assert "sweep" not in again and not (moved / "sweep.md").exists()
    printed = capsys.readouterr().out
    assert "camegrad − linear on ce_example_f1" in printed and "wall time" in printed
    # Another configuration in the same folder is refused, not mixed in.
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--lr", "1e-3"])
    assert exit_info.value.code == 2
    assert "another configuration" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------------------------
# Statistics.


def test_bootstrap_of_equal_differences_is_a_point():
    ci = paired_bootstrap_ci([1.0, 1.0, 1.0])
    assert (ci.low, ci.high, ci.mean) == (1.0, 1.0, 1.0)
    assert ci.excludes_zero()
    assert paired_bootstrap_ci([0.0, 0.0]).excludes_zero() is False


def exact_bootstrap_quantile(differences, level):
    """The level-quantile of the exact bootstrap distribution of the mean (all n^n equally
    likely resamples), as the smallest atom whose CDF reaches the level, with the distance of
    the level from the CDF's jumps (how well a Monte Carlo bootstrap pins it down)."""
    n = len(differences)
    weights: dict[Fraction, Fraction] = {}
    for picks in itertools.product(differences, repeat=n):
        mean = Fraction(sum(picks), n)
        weights[mean] = weights.get(mean, 0) + Fraction(1, n**n)
    cdf = Fraction(0)
    for atom in sorted(weights):
        below = cdf
        cdf += weights[atom]
        if cdf >= level:
            return float(atom), float(min(level - below, cdf - level))
    raise AssertionError("unreachable")


def test_bootstrap_matches_the_exact_resampling_distribution():
    differences = [0, 1, 2, 7]  # 4^4 = 256 equally likely resamples
    low, low_margin = exact_bootstrap_quantile(differences, Fraction(25, 1000))
    high, high_margin = exact_bootstrap_quantile(differences, Fraction(975, 1000))
    assert (low, high) == (0.5, 5.5)
    # Both levels sit well inside a CDF step, many Monte Carlo standard errors from its edges.
    assert min(low_margin, high_margin) > 10 * np.sqrt(0.025 * 0.975 / 100_000)
    ci = paired_bootstrap_ci([float(d) for d in differences], 0.95, resamples=100_000, seed=3)
    assert (ci.low, ci.high) == (low, high)
    assert ci.mean == 2.5


def test_bootstrap_covers_a_skewed_mean_as_the_normal_interval_does():
    # 2000 samples of 30 exponential draws (mean 1, skewed: a median differs from the mean).
    # The percentile interval of the resampled means is, to first order, the normal interval
    # mean ± z·σ̂/√n (σ̂ with ddof 0, the resampled means' spread); on the same samples both
    # cover the true mean equally often, a little under 95% on skewed data (about 91-92% here).
    rng = np.random.default_rng(7)
    samples = rng.exponential(size=(2000, 30))
    covered = []
    for seed, sample in enumerate(samples):
        ci = paired_bootstrap_ci(sample, 0.95, resamples=1000, seed=seed)
        covered.append(ci.low <= 1.0 <= ci.high)
    half_width = 1.959964 * samples.std(axis=1) / np.sqrt(30)
    normal = np.mean(np.abs(samples.mean(axis=1) - 1.0) <= half_width)
    assert 0.88 <= normal <= 0.97
    # The Monte Carlo standard error of either coverage is 0.6 points; a 90% interval (a wrong
    # tail) would cover about 5 points less, an interval of the median about 25 less.
    assert abs(np.mean(covered) - normal) <= 0.025, (np.mean(covered), normal)


def test_bootstrap_resamples_every_difference():
    # Two differences {0, 1}: a resample's mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4,
    # so the 95% interval is [0, 1] in either order.
    for differences in ([0.0, 1.0], [1.0, 0.0]):
        ci = paired_bootstrap_ci(differences, resamples=2000)
        assert (ci.low, ci.high) == (0.0, 1.0), differences
    # One outlier among ten: a resample holds it with probability 1 - 0.9^10 = 0.65, so the
    # upper end is at least the mean of a resample holding it once, wherever it is listed.
    for position in range(10):
        differences = np.zeros(10)
        differences[position] = 100.0
        ci = paired_bootstrap_ci(differences, resamples=2000)
        assert ci.low == 0.0 and ci.high >= 10.0, position


def test_bootstrap_validates_its_arguments():
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_ci([1.0, np.nan])
    with pytest.raises(ValueError, match="`confidence`"):
        paired_bootstrap_ci([1.0], confidence=1.0)
    with pytest.raises(ValueError, match="`resamples`"):
        paired_bootstrap_ci([1.0], resamples=0)


def test_sign_flip_p_value_by_hand():
    # [1, 1]: sign patterns ++ (mean 1), +- (0), -+ (0), -- (-1): |mean| >= 1 in 2 of 4.
    assert sign_flip_p_value([1.0, 1.0]) == 0.5
    # [1, 2, 3]: only +++ and --- reach |mean| >= 2, 2 of 8.
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == 0.25
    # [3, -1]: |mean| 1 observed; patterns give 1, 2, 2, 1: all 4 reach it.
    assert sign_flip_p_value([3.0, -1.0]) == 1.0


def test_covariance_trace_by_hand():
    samples = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    # Columns (1, 3, 5) and (2, 6, 10): variances (4 + 0 + 4) / 2 = 4 and (16 + 0 + 16) / 2 = 16.
    assert covariance_trace(samples) == 20.0
    assert covariance_trace(samples + np.array([100.0, -7.0])) == pytest.approx(20.0)
    assert covariance_trace(3.0 * samples) == pytest.approx(9.0 * 20.0)
    rng = np.random.default_rng(0)
    random = rng.normal(size=(6, 4))
    assert covariance_trace(random) == pytest.approx(np.trace(np.cov(random, rowvar=False)))
    with pytest.raises(ValueError, match="M >= 2"):
        covariance_trace(samples[:1])


def test_update_samples_draw_fresh_noise_per_minibatch(tmp_path):
    """Setting B's noise (a PRNG key in its state) differs between samples of the same
    minibatch; a deterministic method's samples do not (no dropout: ``train=False``)."""
    batch = next(
        build_setup(tiny_config(tmp_path)).dataset.iterate_batches("train", 8, shuffle=False)
    )
    for name, same in (("linear", True), ("camegrad_setting_b", False)):
        setup = build_setup(tiny_config(tmp_path, optimizer=name))
        samples = update_samples(setup, setup.params, [batch, batch], train=False)
        assert np.array_equal(samples[0], samples[1]) == same, name
        assert np.all(np.isfinite(samples))


def test_docstring_examples_run():
    modules = (compare, compare_figures, compare_noise, compare_plan, compare_stats, compare_tables)
    for module in (stats, results, *modules):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_rerun_resumes_a_run_killed_between_its_checkpoint_saves(
    quick_out, summary, tmp_path, monkeypatch
):
    """The linear seed-1 run is trained again and killed after its first "best" checkpoint,
    before any "latest": the next `compare` finishes it, to the same table."""
    moved = tmp_path / "moved"
    shutil.copytree(quick_out, moved)
    shutil.rmtree(moved / "runs" / "linear" / "seed1")
    argv = ["compare", "--quick", "--out", str(moved), *TINY_FLAGS, *TINY_DATA_FLAGS]
    argv += ["--compilation-cache", str(COMPILATION_CACHE_DIR), "--noise-batches", "3"]
    argv += ["--bootstrap-resamples", "500"]
    with monkeypatch.context() as patch:
        fired = interrupt_save(patch, "best", 8, "after")
        with pytest.raises(Interrupted):
            main(argv)
        assert fired
    assert main(argv) == 0
    again = json.loads((moved / SUMMARY_FILE).read_text())
    how = {(r["name"], r["seed"]): r["how"] for r in again["runs"]}
    assert how.pop(("linear", 1)) == "trained" and set(how.values()) == {"reused"}
    assert again["table"] == summary["table"]


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
def test_min_seeds_for_significance_is_where_the_exact_test_first_can_reject(confidence):

    # Differences all of one sign give the smallest p-value the test can attain with n seeds.
    smallest = {n: sign_flip_p_value([1.0 + 0.1 * i for i in range(n)]) for n in range(1, 12)}
    expected = min(n for n, p in smallest.items() if p <= 1.0 - confidence + 1e-12)
    assert min_seeds_for_significance(confidence) == expected
