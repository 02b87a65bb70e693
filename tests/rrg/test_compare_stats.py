"""The `compare` experiment's statistics: the fewest seeds at which the exact sign-flip test can
reject (the paired tables themselves are checked on the tiny run of test_compare.py)."""

from __future__ import annotations

import pytest

from camegrad_jax.rrg.compare_plan import CompareConfig
from camegrad_jax.rrg.compare_stats import comparison_notes, min_seeds_for_significance
from camegrad_jax.rrg.config import SELECTION_METRICS, TrainConfig
from camegrad_jax.rrg.stats import sign_flip_p_value


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
def test_min_seeds_for_significance_is_where_the_exact_test_first_can_reject(confidence):

    # Differences all of one sign give the smallest p-value the test can attain with n seeds.
    smallest = {n: sign_flip_p_value([1.0 + 0.1 * i for i in range(n)]) for n in range(1, 12)}
    expected = min(n for n, p in smallest.items() if p <= 1.0 - confidence + 1e-12)
    assert min_seeds_for_significance(confidence) == expected


def test_notes_name_the_selection_metric_each_run_used():
    said = set()
    for metric in SELECTION_METRICS:
        config = CompareConfig(base=TrainConfig(selection_metric=metric), methods=("linear",))
        first = comparison_notes(config, [])[0]
        assert first.startswith("Test metrics of each run's best checkpoint (by val ")
        said.add(first)
    assert len(said) == len(SELECTION_METRICS)  # Each metric its own words.
    config = CompareConfig(base=TrainConfig(selection_metric="ce_example_no_nf_f1"))
    assert "CE F1 without No Finding" in comparison_notes(config, [])[0]
