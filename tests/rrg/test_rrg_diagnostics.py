"""The step log of a run (`camegrad_jax.rrg.diagnostics`): its summary and its array layout
(named test_rrg_* beside the core's test_diagnostics.py: test files need unique names)."""

from __future__ import annotations

import numpy as np
import pytest

from camegrad_jax.rrg.diagnostics import StepLog, summarize_step_log


def test_step_log_summary_counts_conflicts():
    log = StepLog()
    log.extend(
        [
            {"step": 1, "loss_lm": 2.0, "cosine_similarity": -0.5, "conflict": True},
            {"step": 2, "loss_lm": 1.0, "cosine_similarity": 0.5, "conflict": False},
        ]
    )
    summary = summarize_step_log(log)
    assert summary["num_steps"] == 2
    assert summary["conflict"]["mean"] == 0.5
    assert summary["cosine_similarity"]["q50"] == 0.0
    with pytest.raises(ValueError, match="differ"):
        log.extend([{"step": 3}])
    again = StepLog(log.arrays())
    for name, values in log.arrays().items():
        np.testing.assert_array_equal(again.arrays()[name], values)
    assert (
        again.layout()
        == log.layout()
        == {
            "step": {"shape": [], "dtype": "int64"},
            "loss_lm": {"shape": [], "dtype": "float64"},
            "cosine_similarity": {"shape": [], "dtype": "float64"},
            "conflict": {"shape": [], "dtype": "bool"},
        }
    )
