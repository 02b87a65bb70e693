"""The rigidity table: rows from hand-made summaries of a linear run and the alpha sweeps, its
Markdown table and its figure."""

from __future__ import annotations

import numpy as np
import pytest

from camegrad_jax.rrg.compare_plan import QUICK_FIELDS
from camegrad_jax.rrg.rigidity import (
    VARIANTS,
    compare_configs,
    main,
    markdown_table,
    rigidity_rows,
    write_rigidity,
)


def _stat(mean):
    return {"mean": mean, "std": 0.01, "n": 3, "values": [mean] * 3}


def _runs(name: str, tests: list[dict]) -> list[dict]:
    return [{"name": name, "seed": seed, "test": test} for seed, test in enumerate(tests)]


def _linear_summary(conflict: float) -> dict:
    dynamics = {"conflict_share": _stat(conflict), "collapse_ratio_mean": _stat(0.5)}
    dynamics["cosine_mean"] = _stat(0.1)
    tests = [
        {"ce_example_f1": f1, "ce_example_no_nf_f1": f1 / 2, "BLEU_4": 0.05, "aux_auc_macro": 0.6}
        for f1 in (0.1, 0.3)
    ]
    return {
        "dynamics": {"linear": dynamics},
        "table": {"linear": {"seeds": [0, 1]}},
        "runs": _runs("linear", tests),
    }


def _sweep_summary(f1_by_alpha: dict[float, float]) -> dict:
    rows, runs = [], []
    for alpha, f1 in f1_by_alpha.items():
        name = f"camegrad_alpha{alpha:g}"
        rows.append({"value": alpha, "name": name})
        # BLEU-4 the same at every α (a tie); recall@5 rising with α; seed 1 with no CE F1.
        tests = [{"ce_example_f1": f1, "BLEU_4": 0.05, "aux_retrieval_r5": alpha}, {}]
        runs += _runs(name, tests)
    return {"sweep": {"alpha": rows}, "runs": runs}


def test_rigidity_rows_table_and_figure(tmp_path):
    linear = {"classification": _linear_summary(0.6), "alignment-weak": _linear_summary(0.2)}
    sweeps = {
        "classification": _sweep_summary({0.1: 0.30, 0.2: 0.25, 0.5: 0.2, 0.9: 0.1}),
        "alignment-weak": _sweep_summary({0.1: 0.1, 0.2: 0.2, 0.9: 0.35}),  # 0.5 not run.
        "alignment": _sweep_summary({0.1: 0.1}),  # No linear summary: left out.
    }
    rows = rigidity_rows(linear, sweeps)
    assert [row.variant.name for row in rows] == ["classification", "alignment-weak"]
    assert [row.best_alpha("ce_f1") for row in rows] == [0.1, 0.9]
    assert [row.best_alpha("bleu4") for row in rows] == ["tie", "tie"]
    # The classification variants are scored by AUC, which this sweep summary lacks.
    assert rows[0].best_alpha("aux") is None and rows[1].best_alpha("aux") == 0.9
    assert rows[0].conflict == 0.6 and rows[0].seeds == 2
    assert rows[0].linear.ce_f1 == pytest.approx(0.2)
    assert rows[0].linear.ce_f1_std == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert rows[0].linear.aux == 0.6 and rows[1].linear.aux is None
    assert rows[1].at(0.5) is None and rows[1].at(0.9).ce_f1 == 0.35
    table = markdown_table(rows)
    assert table.count("\n") == 1 + len(rows)
    assert rows[0].linear.ce_f1_no_nf == pytest.approx(0.1)
    assert rows[0].best_alpha("ce_f1_no_nf") is None  # The sweep summaries lack it.
    assert "0.60 ± 0.01" in table and "0.200 / 0.100 / 0.050 / 0.600" in table
    assert "| – |" in table.splitlines()[-1]  # The α not run, in its own column.
    write_rigidity(rows, tmp_path / "rigidity.md", tmp_path / "rigidity.png")
    assert (tmp_path / "rigidity.png").stat().st_size > 0
    text = (tmp_path / "rigidity.md").read_text()
    assert "rigidity.png" in text and "Not measured in this table" in text
    assert {v.name for v in VARIANTS} >= set(sweeps)


def test_settings_reach_every_run_and_the_preamble(tmp_path):
    # The default setting is the demo's, selected by CE F1 without No Finding; the α sweep runs
    # the loop-free solver and linear scalarization none.
    linear, sweep = compare_configs(VARIANTS[2], tmp_path)
    for config in (linear, sweep):
        assert config.base.synthetic_train_size == QUICK_FIELDS["synthetic_train_size"]
        assert config.base.epochs == QUICK_FIELDS["epochs"]
        assert config.base.selection_metric == "ce_example_no_nf_f1"
        assert config.base.aux == "alignment" and config.noise_methods == ()
    assert sweep.base.method_options == {"solver": "enumerate"} and not linear.base.method_options
    assert sweep.sweep_grid == {"alpha": (0.1, 0.2, 0.5, 0.9)}
    # Nothing run: the table is empty, and the preamble names the setting measured.
    assert main(["--variants", "none", "--setting", "full", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "rigidity.md").read_text()
    assert "--setting full" in text and "default configuration" in text
    with pytest.raises(SystemExit):
        main(["--variants", "none", "--setting", "tiny", "--out", str(tmp_path)])
