"""Tests for the rule-based labeler (the CheXbert back end and the agreement between labelers
have test files of their own)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from camegrad_jax.rrg import labeler
from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.observations import (
    BLANK,
    NEGATIVE,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)

P, N, U = POSITIVE, NEGATIVE, UNCERTAIN
NF = "no_finding"


def nonblank(report: str) -> dict[str, int]:
    labels = label_reports([report])[0]
    return {name: int(v) for name, v in zip(OBSERVATIONS, labels, strict=True) if v != BLANK}


# Each sentence with every non-blank label it should get (so an extra label also fails).
SENTENCES = [
    # enlarged cardiomediastinum
    ("Widened mediastinum.", {"enlarged_cardiomediastinum": P}),
    ("Mediastinal contours are widened.", {"enlarged_cardiomediastinum": P}),
    # A normal cardiomediastinal silhouette has a normal heart; an enlarged one says no more.
    (
        "The cardiomediastinal silhouette is within normal limits.",
        {"enlarged_cardiomediastinum": N, "cardiomegaly": N, NF: P},
    ),
    ("The cardiomediastinal silhouette is enlarged.", {"enlarged_cardiomediastinum": P}),
    # cardiomegaly
    ("Heart size is normal.", {"cardiomegaly": N, NF: P}),
    ("The heart is normal in size.", {"cardiomegaly": N, NF: P}),
    ("The heart is not enlarged.", {"cardiomegaly": N, NF: P}),
    ("The heart is mildly enlarged.", {"cardiomegaly": P}),
    ("Enlargement of the cardiac silhouette.", {"cardiomegaly": P}),
    ("Moderate cardiomegaly.", {"cardiomegaly": P}),
    ("There is no cardiomegaly.", {"cardiomegaly": N, NF: P}),
    ("Heart size is borderline.", {"cardiomegaly": U}),  # CheXpert: borderline is uncertain
    ("The heart size may be mildly enlarged.", {"cardiomegaly": U}),
    (
        "Heart size and mediastinal contours are within normal limits.",
        {"cardiomegaly": N, "enlarged_cardiomediastinum": N, NF: P},
    ),
    (
        "The heart size is enlarged and the mediastinal contours are normal.",
        {"cardiomegaly": P, "enlarged_cardiomediastinum": N},
    ),
    # "heart" that is not about heart size is not a mention
    ("Large hiatal hernia behind the heart.", {}),  # hernia: no_finding is not positive
    # lung opacity
    ("Patchy opacity in the right lower lobe.", {"lung_opacity": P}),
    ("No focal infiltrate.", {"lung_opacity": N, NF: P}),
    # CheXpert gives "the lungs are clear" no label (`lungs_clear_negates` is off by default).
    ("The lungs are clear.", {NF: P}),
    ("The lungs are clear except for mild bibasilar atelectasis.", {"atelectasis": P}),
    # lung lesion
    ("A 1.5 cm nodule in the right upper lobe.", {"lung_lesion": P}),
    ("Questionable nodule in the right mid lung.", {"lung_lesion": U}),
    # Not a lung lesion, but abnormal: an unrecognised statement leaves no_finding blank.
    ("Lytic lesion in the proximal humerus.", {}),
    # edema
    ("Moderate pulmonary edema.", {"edema": P}),
    ("Mild pulmonary vascular congestion.", {"edema": U}),  # CheXpert: congestion is uncertain
    ("No pulmonary edema.", {"edema": N, NF: P}),
    ("Congestive heart failure.", {"edema": P, "cardiomegaly": U}),  # CheXpert's CHF rule
    # consolidation and pneumonia
    ("Without evidence of consolidation.", {"consolidation": N, NF: P}),
    ("Cannot exclude early pneumonia.", {"pneumonia": U}),
    ("Pneumonia cannot be excluded.", {"pneumonia": U}),
    (
        "Right lower lobe consolidation concerning for pneumonia.",
        {"consolidation": P, "pneumonia": U},
    ),
    (
        "No focal consolidation is seen to suggest pneumonia.",
        {"consolidation": N, "pneumonia": N, NF: P},
    ),
    ("No new consolidation.", {"consolidation": U}),  # CheXpert: "no new" is uncertain
    # atelectasis
    ("Plate-like atelectasis at the left base.", {"atelectasis": P}),
    ("Bibasilar opacities likely reflect atelectasis.", {"lung_opacity": P, "atelectasis": U}),
    ("Atelectasis versus consolidation at the left base.", {"atelectasis": U, "consolidation": U}),
    (
        "Left lower lobe opacity may represent atelectasis or pneumonia.",
        {"lung_opacity": P, "atelectasis": U, "pneumonia": U},
    ),
    # pneumothorax and pleural effusion
    ("No pleural effusion or pneumothorax.", {"pleural_effusion": N, "pneumothorax": N, NF: P}),
    (
        "There is no focal consolidation, pleural effusion, or pneumothorax.",
        {"consolidation": N, "pleural_effusion": N, "pneumothorax": N, NF: P},
    ),
    ("Small right apical pneumothorax.", {"pneumothorax": P}),
    ("The pneumothorax has resolved.", {"pneumothorax": N, NF: P}),
    ("Pneumothorax is no longer visualized.", {"pneumothorax": N, NF: P}),
    ("No pneumothorax, small left effusion.", {"pneumothorax": N, "pleural_effusion": P}),
    ("Possible small left effusion.", {"pleural_effusion": U}),
    # CheXpert: blunting alone is an uncertain effusion (fluid or scarring).
    ("Blunting of the left costophrenic angle.", {"pleural_effusion": U}),
    ("No significant change in the small left effusion.", {"pleural_effusion": P}),
    ("No pericardial effusion.", {NF: P}),  # not a pleural effusion
    # pleural other, fracture
    ("Pleural thickening at the left apex.", {"pleural_other": P}),
    ("Healed left rib fractures.", {"fracture": P}),
    ("No displaced rib fracture.", {"fracture": N, NF: P}),
    # support devices; they do not stop no_finding
    ("Endotracheal tube terminates 4 cm above the carina.", {"support_devices": P, NF: P}),
    ("Median sternotomy wires are intact.", {"support_devices": P, NF: P}),
    ("Interval removal of the right chest tube.", {"support_devices": N, NF: P}),
    ("The NG tube has been removed.", {"support_devices": N, NF: P}),
    ("The trachea is midline.", {NF: P}),
    # Not a device line; what it does say (a pneumothorax's edge) is not recognised, so
    # no_finding stays blank.
    ("The visceral pleural line is seen at the right apex.", {}),
    (
        "There is no evidence of pneumothorax, and the chest tube remains in place.",
        {"pneumothorax": N, "support_devices": P, NF: P},
    ),
    # no acute process: no mention of anything, as in CheXpert
    ("No acute cardiopulmonary process.", {NF: P}),
    # R2Gen-cleaned text: lower case, no commas, " . " between sentences
    (
        "no focal consolidation pleural effusion or pneumothorax .",
        {"consolidation": N, "pleural_effusion": N, "pneumothorax": N, NF: P},
    ),
    (
        "the cardiomediastinal silhouette and pulmonary vasculature are within normal limits .",
        {"enlarged_cardiomediastinum": N, "cardiomegaly": N, NF: P},
    ),
]


@pytest.mark.parametrize(("report", "expected"), SENTENCES, ids=[s for s, _ in SENTENCES])
def test_sentence_labels(report, expected):
    assert nonblank(report) == expected


def test_all_fourteen_observations_are_covered_by_the_sentences():
    seen = {name for _, expected in SENTENCES for name in expected}
    assert seen == set(OBSERVATIONS)


def test_multi_sentence_report_full_vector():
    report = (
        "FINDINGS: PA and lateral views of the chest. The heart is mildly enlarged. There is a "
        "small left pleural effusion with adjacent atelectasis; pneumonia is not excluded. "
        "No pneumothorax. A right-sided PICC line terminates in the lower SVC.\n"
        "IMPRESSION: Cardiomegaly and small left effusion."
    )
    expected = np.zeros(NUM_OBSERVATIONS, dtype=np.int64)
    for name, label in {
        "cardiomegaly": P,
        "pleural_effusion": P,
        "atelectasis": P,
        "pneumonia": U,
        "pneumothorax": N,
        "support_devices": P,
    }.items():
        expected[OBSERVATIONS.index(name)] = label
    np.testing.assert_array_equal(label_reports([report])[0], expected)


@pytest.mark.parametrize("lungs_clear_negates", [False, True])
def test_normal_report_full_vector(lungs_clear_negates):
    report = (
        "The lungs are clear. Heart size is normal. The mediastinal contours are unremarkable. "
        "No pleural effusion or pneumothorax. No acute osseous abnormality."
    )
    labelled = label_reports([report], lungs_clear_negates=lungs_clear_negates)[0]
    labels = dict(zip(OBSERVATIONS, labelled.tolist(), strict=True))
    cleared = N if lungs_clear_negates else BLANK  # what "the lungs are clear" says
    assert labels == {
        "enlarged_cardiomediastinum": N,
        "cardiomegaly": N,
        "lung_opacity": cleared,
        "lung_lesion": BLANK,
        "edema": cleared,
        "consolidation": cleared,
        "pneumonia": cleared,
        "atelectasis": BLANK,
        "pneumothorax": N,
        "pleural_effusion": N,
        "pleural_other": BLANK,
        "fracture": BLANK,
        "support_devices": BLANK,
        NF: P,
    }


def test_aggregation_positive_beats_uncertain_beats_negative():
    assert nonblank("No cardiomegaly. Mild cardiomegaly.")["cardiomegaly"] == P
    assert nonblank("No pneumonia. Pneumonia cannot be excluded.")["pneumonia"] == U
    assert nonblank("Possible effusion. Small right effusion.")["pleural_effusion"] == P
    # Across one report, a later "heart size is normal" does not undo an enlarged heart.
    assert nonblank("The heart is enlarged. Heart size is normal.")["cardiomegaly"] == P


@pytest.mark.parametrize(
    ("report", "no_finding"),
    [
        ("No pleural effusion. Heart size is normal.", P),  # only negatives
        ("Left chest tube in place. Lungs are clear.", P),  # support devices do not count
        ("Possible small left effusion.", BLANK),  # an uncertain finding counts
        ("Mild cardiomegaly.", BLANK),
        ("Calcified granuloma in the left upper lobe.", BLANK),  # CheXpert's other findings
        ("Degenerative changes of the thoracic spine.", BLANK),
        ("No hiatal hernia.", P),  # a negated other finding does not count
    ],
)
def test_no_finding(report, no_finding):
    assert label_reports([report])[0][OBSERVATIONS.index(NF)] == no_finding


@pytest.mark.parametrize("report", ["", "   ", " . ", "\n"])
def test_empty_report_is_all_blank(report):
    np.testing.assert_array_equal(label_reports([report]), np.zeros((1, NUM_OBSERVATIONS)))


def test_label_reports_shape_and_inputs():
    labels = label_reports(["Mild cardiomegaly.", "Normal chest.", ""])
    assert labels.shape == (3, NUM_OBSERVATIONS)
    assert labels.dtype == np.int64
    assert label_reports([]).shape == (0, NUM_OBSERVATIONS)
    with pytest.raises(TypeError, match="single string"):
        label_reports("Mild cardiomegaly.")


def test_docstring_examples_run():
    result = doctest.testmod(labeler, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
