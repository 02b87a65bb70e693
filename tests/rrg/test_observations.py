"""The observation list and label encoding that the labelers, the model and the metrics share."""

from __future__ import annotations

from camegrad_jax.rrg.observations import (
    BLANK,
    NEGATIVE,
    NUM_LABEL_CLASSES,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)


def test_fourteen_distinct_chexpert_observations_no_finding_last():
    assert NUM_OBSERVATIONS == len(set(OBSERVATIONS)) == 14
    # CheXbert's heads: 13 four-way ones in this order, then the two-way no_finding head.
    assert OBSERVATIONS[0] == "enlarged_cardiomediastinum"
    assert OBSERVATIONS[-1] == "no_finding"


def test_the_four_label_values_are_chexberts_class_indices():
    assert (BLANK, POSITIVE, NEGATIVE, UNCERTAIN) == (0, 1, 2, 3)
    assert NUM_LABEL_CLASSES == 4
