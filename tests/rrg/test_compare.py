"""Tests of the method comparison (`camegrad_jax.rrg.compare`, ``camegrad-rrg compare``) end to
end; its plan, its statistics and `camegrad_jax.rrg.stats` have test files of their own.

One tiny ``compare --quick --sweep`` (linear and CAME-Grad, two seeds, a one-point sweep) runs
once per module through the command line; most tests read its output folder.
"""

from __future__ import annotations

import doctest
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.rrg_tiny import (
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
)
from camegrad_jax.rrg.experiment import load_data
from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.observations import POSITIVE
from camegrad_jax.rrg.results import STEP_LOG_FILE

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
    argv += ["--compilation-cache", str(tmp_path / "cache"), "--noise-batches", "3"]
    argv += ["--bootstrap-resamples", "500"]
    assert main(argv) == 0
    # The command's cache was for the command only: the process's setting is back (a leaked
    # one would make every later compilation of this process write to it).
    assert jax.config.jax_compilation_cache_dir == str(COMPILATION_CACHE_DIR)
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
