"""The agreement between two labelers' label matrices, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from camegrad_jax.rrg.labeler_agreement import labeler_agreement
from camegrad_jax.rrg.observations import NUM_OBSERVATIONS


def test_labeler_agreement_hand_computed():
    gold = np.zeros((4, NUM_OBSERVATIONS), dtype=int)
    pred = np.zeros((4, NUM_OBSERVATIONS), dtype=int)
    gold[:, 0] = [1, 1, 0, 2]
    pred[:, 0] = [1, 0, 1, 2]  # TP r0, FN r1, FP r2, r3 equal
    gold[:, 1] = pred[:, 1] = [3, 0, 0, 0]  # equal, and no positives anywhere
    agreement = labeler_agreement(pred, gold)

    assert agreement.accuracy[0] == pytest.approx(2 / 4)
    assert agreement.accuracy[1:] == pytest.approx(np.ones(13))
    assert agreement.positive_f1[0] == pytest.approx(1 / (1 + 0.5 * (1 + 1)))
    assert np.isnan(agreement.positive_f1[1:]).all()  # F1 undefined without positives
    assert agreement.positive_support.tolist() == [2] + [0] * 13
    assert agreement.overall_accuracy == pytest.approx(54 / 56)
    # Non-blank cells: column 0 has 4 (r2 is blank only on the gold side), column 1 has 1;
    # the mismatches are r1 (missed) and r2 (spurious).
    assert agreement.nonblank_agreement == pytest.approx(3 / 5)
    assert agreement.exact_match == pytest.approx(2 / 4)
    assert agreement.positive_f1_macro == pytest.approx(0.5)
    assert agreement.positive_f1_micro == pytest.approx(0.5)
    flat = agreement.as_dict()
    assert flat["accuracy/enlarged_cardiomediastinum"] == pytest.approx(0.5)
    assert len(flat) == 5 + 2 * NUM_OBSERVATIONS
    assert "| cardiomegaly | 1.000 | n/a | 0 |" in agreement.table()


def test_labeler_agreement_rejects_bad_input():
    good = np.zeros((2, NUM_OBSERVATIONS), dtype=int)
    with pytest.raises(ValueError, match="shape"):
        labeler_agreement(good, np.zeros((2, 13), dtype=int))
    with pytest.raises(ValueError, match="labels in"):
        labeler_agreement(good, good + 4)
    with pytest.raises(ValueError, match="same shape"):
        labeler_agreement(good, np.zeros((3, NUM_OBSERVATIONS), dtype=int))
