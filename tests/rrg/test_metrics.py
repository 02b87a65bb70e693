"""Tests for the NLG, clinical-efficacy and auxiliary-head metrics (expected values by hand)."""

from __future__ import annotations

import shutil
from itertools import product

import numpy as np
import pytest

from camegrad_jax.rrg import metrics
from camegrad_jax.rrg.metrics import (
    auxiliary_head_metrics,
    clinical_efficacy_example_based,
    clinical_efficacy_label_macro,
    evaluate_reports,
    nlg_scores,
    roc_auc,
)
from camegrad_jax.rrg.observations import NUM_OBSERVATIONS

L = NUM_OBSERVATIONS


def labels_from(rows: list[dict[int, int]]) -> np.ndarray:
    """(N, 14) labels, blank except the given {observation index: label} per report."""
    out = np.zeros((len(rows), L), dtype=int)
    for i, row in enumerate(rows):
        for j, value in row.items():
            out[i, j] = value
    return out


# Four reports; 1 positive, 2 negative, 3 uncertain.
GENERATED = labels_from(
    [
        {0: 1, 1: 1, 2: 1, 8: 1},  # r0
        {4: 3},  # r1: only an uncertain label
        {6: 2},  # r2: only a negative label
        {1: 1, 7: 1},  # r3
    ]
)
REFERENCE = labels_from(
    [
        {1: 1, 2: 1, 3: 1},  # r0
        {5: 1},  # r1
        {6: 3},  # r2: only an uncertain label
        {7: 1},  # r3
    ]
)


def test_ce_example_based_hand_computed():
    # Positive = label 1 only. Per report (TP, FP, FN) -> P, R, F1 = TP / (TP + (FP + FN) / 2):
    #   r0: (2, 2, 1) -> 1/2, 2/3, 2 / 3.5 = 4/7
    #   r1: (0, 0, 1) -> 0 (0/0), 0, 0        (the generated uncertain label does not count)
    #   r2: (0, 0, 0) -> 0, 0, 0              (no positive on either side scores 0)
    #   r3: (1, 1, 0) -> 1/2, 1, 1 / 1.5 = 2/3
    precision = (1 / 2 + 0 + 0 + 1 / 2) / 4
    recall = (2 / 3 + 0 + 0 + 1) / 4
    f1 = (4 / 7 + 0 + 0 + 2 / 3) / 4
    scores = clinical_efficacy_example_based(GENERATED, REFERENCE)
    assert scores["precision"] == pytest.approx(1 / 4)
    assert scores["precision"] == pytest.approx(precision)
    assert scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(f1)
    assert scores["avg"] == pytest.approx((precision + recall + f1) / 3)


def test_ce_label_macro_hand_computed():
    # Positive = label 1 or 3. Per observation over the 4 reports, (TP, FP, FN):
    #   l0 (0,1,0) l1 (1,1,0) l2 (1,0,0) l3 (0,0,1) l4 (0,1,0) [uncertain r1 counts]
    #   l5 (0,0,1) l6 (0,0,1) [uncertain reference r2 counts] l7 (1,0,0) l8 (0,1,0)
    #   l9..l13 (0,0,0) -> 0/0 = 0.
    # Non-zero entries: l1 P 1/2 R 1 F1 2/3; l2 and l7 all 1.
    precision = (1 / 2 + 1 + 1) / 14
    recall = (1 + 1 + 1) / 14
    f1 = (2 / 3 + 1 + 1) / 14
    scores = clinical_efficacy_label_macro(GENERATED, REFERENCE)
    assert scores["precision"] == pytest.approx(precision)
    assert scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(f1)
    assert scores["avg"] == pytest.approx((precision + recall + f1) / 3)


@pytest.mark.parametrize(
    "protocol", [clinical_efficacy_example_based, clinical_efficacy_label_macro]
)
def test_ce_edge_cases(protocol):
    blank = np.zeros((3, L), dtype=int)
    assert protocol(blank, blank) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "avg": 0.0}
    perfect = labels_from([{13: 1}, {1: 1, 9: 1}, {0: 1}])
    scores = protocol(perfect, perfect)
    if protocol is clinical_efficacy_label_macro:
        # 5 of the 14 observations have positives; the other 9 are 0/0 -> 0.
        assert scores["f1"] == pytest.approx(4 / 14)
    else:
        assert scores == pytest.approx({"precision": 1, "recall": 1, "f1": 1, "avg": 1})


def test_ce_uncertain_counts_only_in_label_macro():
    uncertain = labels_from([{9: 3}])
    positive = labels_from([{9: 1}])
    assert clinical_efficacy_example_based(uncertain, positive)["f1"] == 0.0
    assert clinical_efficacy_label_macro(uncertain, positive)["f1"] == pytest.approx(1 / 14)


def test_ce_rejects_bad_labels():
    good = np.zeros((2, L), dtype=int)
    with pytest.raises(ValueError, match="same shape"):
        clinical_efficacy_example_based(good, np.zeros((3, L), dtype=int))
    with pytest.raises(ValueError, match=r"shape \(N, 14\)"):
        clinical_efficacy_label_macro(good[:, :3], good[:, :3])
    with pytest.raises(ValueError, match="at least one"):
        clinical_efficacy_label_macro(good[:0], good[:0])


def brute_force_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    positives, negatives = scores[targets], scores[~targets]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(positives, negatives))
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    scores = np.round(rng.random(n), 1)  # one decimal: many ties
    targets = rng.random(n) < 0.3
    targets[:2] = [True, False]  # both classes present
    assert roc_auc(scores, targets) == pytest.approx(brute_force_auc(scores, targets))


def test_roc_auc_known_values():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0
    assert roc_auc([0.9, 0.1], [0, 1]) == 0.0
    assert np.isnan(roc_auc([0.2, 0.3], [1, 1]))  # a single class: undefined


def aux_case() -> tuple[np.ndarray, np.ndarray]:
    gold = np.zeros((4, L), dtype=int)  # observations 2..13: all blank, a single class
    gold[:, 0] = [1, 0, 1, 2]
    gold[:, 1] = [0, 1, 3, 0]  # uncertain is "rest" here
    scores = np.zeros((4, L))
    scores[:, 0] = [0.9, 0.2, 0.4, 0.6]
    scores[:, 1] = [0.1, 0.7, 0.7, 0.3]
    return scores, gold


def test_auxiliary_head_metrics_hand_computed():
    scores, gold = aux_case()
    result = auxiliary_head_metrics(scores, gold)
    # AUC l0: positives 0.9, 0.4 vs negatives 0.2, 0.6 -> 3 of 4 pairs.
    # AUC l1: positive 0.7 vs 0.1, 0.7 (tie, 1/2), 0.3 -> 2.5 / 3. Other labels skipped.
    assert result["auc_macro"] == pytest.approx((3 / 4 + 2.5 / 3) / 2)
    assert result["auc_macro_num_labels"] == 2
    # Micro: 3 positives (0.9, 0.4, 0.7) vs 53 negatives (0.2, 0.6, 0.1, 0.7, 0.3, 48 zeros):
    # 0.9 beats 53; 0.4 beats 51; 0.7 beats 52 and ties 1.
    assert result["auc_micro"] == pytest.approx((53 + 51 + 52.5) / (3 * 53))
    # Threshold 0.5. l0: TP r0, FP r3, FN r2 -> 1/2, 1/2, 1/2.
    # l1: TP r1, FP r2 -> 1/2, 1, 2/3. Others 0/0 -> 0. Micro: TP 2, FP 2, FN 1.
    assert result["precision_macro"] == pytest.approx((1 / 2 + 1 / 2) / 14)
    assert result["recall_macro"] == pytest.approx((1 / 2 + 1) / 14)
    assert result["f1_macro"] == pytest.approx((1 / 2 + 2 / 3) / 14)
    assert result["precision_micro"] == pytest.approx(2 / 4)
    assert result["recall_micro"] == pytest.approx(2 / 3)
    assert result["f1_micro"] == pytest.approx(2 / (2 + 1.5))


def test_auxiliary_head_metrics_from_probabilities_uses_argmax():
    scores, gold = aux_case()
    # Positive probability s, the rest shared by the other 3 classes: the positive class is the
    # arg-max iff s > (1 - s) / 3, i.e. s > 0.25, so 0.4 (l0 r2) and 0.3 (l1 r3) turn positive.
    probabilities = np.repeat(((1 - scores) / 3)[..., None], 4, axis=-1)
    probabilities[..., 1] = scores
    result = auxiliary_head_metrics(probabilities, gold)
    assert result["auc_macro"] == pytest.approx(auxiliary_head_metrics(scores, gold)["auc_macro"])
    # l0: TP r0 r2, FP r3 -> recall 1; l1: TP r1, FP r2 r3 -> precision 1/3.
    assert result["recall_micro"] == pytest.approx(1.0)
    assert result["precision_micro"] == pytest.approx(3 / 6)
    # An explicit threshold overrides the arg-max.
    assert auxiliary_head_metrics(probabilities, gold, threshold=0.5) == pytest.approx(
        auxiliary_head_metrics(scores, gold)
    )


def test_auxiliary_head_metrics_rejects_bad_shapes():
    _, gold = aux_case()
    with pytest.raises(ValueError, match="should have shape"):
        auxiliary_head_metrics(np.zeros((4, L, 3)), gold)
    with pytest.raises(ValueError, match="should have shape"):
        auxiliary_head_metrics(np.zeros((5, L)), gold)


@pytest.fixture
def no_java(monkeypatch):
    """METEOR unavailable; starting it anyway would fail the test."""
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)

    def refuse(*args, **kwargs):
        raise AssertionError("METEOR must not start without Java")

    monkeypatch.setattr("pycocoevalcap.meteor.meteor.Meteor", refuse)


REPORTS = [
    "the heart is normal in size . no pleural effusion or pneumothorax .",
    "mild cardiomegaly . small left pleural effusion .",
]


def test_nlg_identical_reports_score_one(no_java):
    with pytest.warns(RuntimeWarning, match="java"):
        scores = nlg_scores(REPORTS, REPORTS)
    for key in ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6)


def test_nlg_without_java_reports_the_rest(no_java):
    with pytest.warns(RuntimeWarning, match="no `java` executable"):
        scores = nlg_scores(["the heart is normal ."], [REPORTS[0]])
    assert scores["METEOR"] is None
    assert "Java" in scores["METEOR_note"]
    assert 0.0 < scores["BLEU_1"] < 1.0
    assert 0.0 < scores["ROUGE_L"] < 1.0


def test_nlg_handles_empty_generated_reports(no_java):
    with pytest.warns(RuntimeWarning):
        scores = nlg_scores(["", REPORTS[1]], REPORTS)
    assert scores["ROUGE_L"] == pytest.approx(0.5)  # 0 for the empty one, 1 for the other
    assert 0.0 < scores["BLEU_1"] < 1.0
    with pytest.warns(RuntimeWarning):
        scores = nlg_scores(["", "  "], REPORTS)
    assert scores["BLEU_4"] == 0.0
    assert scores["ROUGE_L"] == 0.0


def test_nlg_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same length"):
        nlg_scores(REPORTS, REPORTS[:1])
    with pytest.raises(TypeError, match="single string"):
        nlg_scores(REPORTS[0], REPORTS[0])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_with_java():
    scores = nlg_scores(REPORTS + [""], REPORTS + [REPORTS[0]])
    assert "METEOR_note" not in scores
    assert 0.5 < scores["METEOR"] < 1.0
    assert nlg_scores(REPORTS, REPORTS)["METEOR"] > 0.99


CE_PARTS = ("precision", "recall", "f1", "avg")
EXPECTED_KEYS = {
    "BLEU_1",
    "BLEU_2",
    "BLEU_3",
    "BLEU_4",
    "METEOR",
    "ROUGE_L",
    "ce_example_precision",
    "ce_example_recall",
    "ce_example_f1",
    "ce_example_avg",
    "ce_label_macro_precision",
    "ce_label_macro_recall",
    "ce_label_macro_f1",
    "ce_label_macro_avg",
    *(f"ce_{p}_no_nf_{m}" for p in ("example", "label_macro") for m in CE_PARTS),
}


def test_evaluate_reports_with_rule_based_labeler(no_java):
    generated = ["No pleural effusion or pneumothorax. Heart size is normal.", "Mild cardiomegaly."]
    references = ["Small left pleural effusion. Heart size is normal.", "Mild cardiomegaly."]
    with pytest.warns(RuntimeWarning):
        scores = evaluate_reports(generated, references)
    assert set(scores) == EXPECTED_KEYS | {"METEOR_note"}
    # Report 1: generated positive {no_finding}, reference {pleural_effusion} -> 0.
    # Report 2: {cardiomegaly} on both sides -> 1.
    assert scores["ce_example_f1"] == pytest.approx(0.5)
    assert scores["ce_example_precision"] == pytest.approx(0.5)
    # Label-macro: cardiomegaly 1; effusion and no_finding 0; 11 others 0/0 -> 0.
    assert scores["ce_label_macro_f1"] == pytest.approx(1 / 14)
    # Without no_finding: report 1 has no generated positive (F1 0), report 2 scores 1; over
    # 13 labels the macro F1 is cardiomegaly's 1 / 13.
    assert scores["ce_example_no_nf_f1"] == pytest.approx(0.5)
    assert scores["ce_label_macro_no_nf_f1"] == pytest.approx(1 / 13)


def test_ce_without_no_finding_cannot_be_gamed_by_a_normal_report():
    normal = np.zeros((5, NUM_OBSERVATIONS), int)
    normal[:, -1] = 1  # every reference normal, and the constant "normal" report too
    assert clinical_efficacy_example_based(normal, normal)["f1"] == 1.0
    assert clinical_efficacy_example_based(normal, normal, exclude_no_finding=True)["f1"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_ce_without_no_finding_equals_ce_with_that_column_blanked(seed):
    rng = np.random.default_rng(seed)
    generated = rng.integers(0, 4, size=(30, NUM_OBSERVATIONS))
    reference = rng.integers(0, 4, size=(30, NUM_OBSERVATIONS))
    blank_g, blank_r = generated.copy(), reference.copy()
    blank_g[:, -1] = blank_r[:, -1] = 0  # no_finding is the last observation
    # Example-based: a blank column adds no TP/FP/FN, so it is the same as leaving it out.
    assert clinical_efficacy_example_based(
        generated, reference, exclude_no_finding=True
    ) == pytest.approx(clinical_efficacy_example_based(blank_g, blank_r))
    # Label-macro: a blank column scores 0 and counts in the mean over 14, not over 13.
    blanked = clinical_efficacy_label_macro(blank_g, blank_r)
    excluded = clinical_efficacy_label_macro(generated, reference, exclude_no_finding=True)
    for key in ("precision", "recall", "f1"):
        assert excluded[key] == pytest.approx(blanked[key] * 14 / 13)


def test_evaluate_reports_with_custom_labeler_and_reference_labels(monkeypatch):
    monkeypatch.setattr(
        metrics, "nlg_scores", lambda g, r, **options: {"BLEU_1": 1.0, "METEOR": 0.5}
    )
    texts = [f"report {i}" for i in range(4)]

    def fake_labeler(reports):
        return GENERATED if reports[0] == "report 0" else REFERENCE

    scores = evaluate_reports(texts, [f"ref {i}" for i in range(4)], fake_labeler)
    assert scores["ce_example_f1"] == pytest.approx((4 / 7 + 2 / 3) / 4)
    assert scores["ce_label_macro_precision"] == pytest.approx(2.5 / 14)
    assert "METEOR_note" not in scores
    # Given reference labels are used as they are; here equal to the generated ones, so r0 and
    # r3 score 1 and r1, r2 (no positive label) score 0.
    scores = evaluate_reports(texts, texts, fake_labeler, reference_labels=GENERATED)
    assert scores["ce_example_recall"] == pytest.approx(2 / 4)
