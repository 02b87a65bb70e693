"""Tests for the v1 synthetic data set (the generator the README's v1 results were measured on):
determinism, labels, reports, images. The default v2 generator is tested in test_synthetic_v2.py."""

import dataclasses
import re

import numpy as np
import pytest

from camegrad_jax.rrg.observations import (
    BLANK,
    NEGATIVE,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)
from camegrad_jax.rrg.synthetic import (
    Finding,
    SyntheticConfig,
    generate_synthetic,
    make_study_findings,
    render_views,
    synthetic_study,
)

SMALL = SyntheticConfig(seed=5, num_train=12, num_val=4, num_test=4, image_size=32, generator="v1")
COLUMN = {name: i for i, name in enumerate(OBSERVATIONS)}


@pytest.fixture(scope="module")
def label_sample():
    """Findings and reports of 3000 studies (no images: fast)."""
    studies = [
        synthetic_study(11, "train", i, image_size=None, generator="v1") for i in range(3000)
    ]
    labels = np.array([findings.labels for findings, _, _ in studies])
    return labels, [report for _, report, _ in studies]


@pytest.fixture(scope="module")
def image_sample():
    """400 one-view studies at 64x64 with their labels."""
    config = SyntheticConfig(
        seed=3, num_train=400, num_val=1, num_test=1, num_views=1, generator="v1"
    )
    train = generate_synthetic(config)["train"]
    return train.images[:, 0], train.labels


def test_same_seed_same_data_bit_for_bit():
    first, second = generate_synthetic(SMALL), generate_synthetic(SMALL)
    for split in ("train", "val", "test"):
        assert first[split].ids == second[split].ids
        assert first[split].reports == second[split].reports
        assert first[split].images.tobytes() == second[split].images.tobytes()
        assert np.array_equal(first[split].labels, second[split].labels)


def test_different_seed_different_data():
    first = generate_synthetic(SMALL)["train"]
    other = generate_synthetic(dataclasses.replace(SMALL, seed=6))["train"]
    assert first.reports != other.reports
    assert not np.array_equal(first.labels, other.labels)
    assert not np.array_equal(first.images, other.images)


def test_study_does_not_depend_on_split_size_or_view_count():
    small = generate_synthetic(SMALL)["train"]
    larger = dataclasses.replace(SMALL, num_train=20, num_val=1, num_test=1, num_views=1)
    larger = generate_synthetic(larger)["train"]
    assert small.reports[:12] == larger.reports[:12]
    assert np.array_equal(small.labels, larger.labels[:12])
    assert np.array_equal(small.images[:, 0], larger.images[:12, 0])  # same frontal view


def test_shapes_dtypes_and_range():
    train = generate_synthetic(SMALL)["train"]
    assert train.images.shape == (12, 2, 32, 32) and train.images.dtype == np.float32
    assert train.images.min() >= 0.0 and train.images.max() <= 1.0
    assert train.labels.shape == (12, 14) and train.labels.dtype == np.int32
    assert SMALL.dataset_name == "iu_xray"
    assert SyntheticConfig(num_views=1).dataset_name == "mimic_cxr"


def test_default_sizes():
    config = SyntheticConfig()
    assert config.split_sizes == {"train": 2000, "val": 250, "test": 250}
    assert (config.image_size, config.num_views) == (64, 2)


def test_label_frequencies_are_long_tailed(label_sample):
    labels, _ = label_sample
    positive = (labels == POSITIVE).mean(axis=0)
    rate = dict(zip(OBSERVATIONS, positive, strict=True))
    assert max(rate, key=rate.get) == "no_finding"
    assert 0.38 < rate["no_finding"] < 0.6  # most studies are normal
    for rare in ("pneumothorax", "fracture", "lung_lesion", "pleural_other"):
        assert 0.003 < rate[rare] < 0.04, rare
        for common in ("support_devices", "pleural_effusion", "lung_opacity", "atelectasis"):
            assert rate[common] > 2 * rate[rare], (common, rare)
    assert all(0 < rate[name] for name in OBSERVATIONS)
    assert (labels == UNCERTAIN).any() and (labels == NEGATIVE).any()


def test_labels_are_correlated_like_chest_radiographs(label_sample):
    labels, _ = label_sample
    pos = labels == POSITIVE
    pneumonia, edema = pos[:, COLUMN["pneumonia"]], pos[:, COLUMN["edema"]]
    airspace = pos[:, COLUMN["lung_opacity"]] | pos[:, COLUMN["consolidation"]]
    assert airspace[pneumonia].mean() > 2 * airspace.mean()
    cardiomegaly = pos[:, COLUMN["cardiomegaly"]]
    assert cardiomegaly[edema].mean() > 2 * cardiomegaly.mean()


def test_no_finding_iff_nothing_but_devices_positive_or_uncertain(label_sample):
    labels, _ = label_sample
    others = np.delete(labels, [COLUMN["no_finding"], COLUMN["support_devices"]], axis=1)
    anything = np.isin(others, (POSITIVE, UNCERTAIN)).any(axis=1)
    no_finding = labels[:, COLUMN["no_finding"]]
    assert np.array_equal(no_finding == POSITIVE, ~anything)
    assert set(np.unique(no_finding)) <= {BLANK, POSITIVE}
    # Some studies have only uncertain findings: `no_finding` must then be blank.
    only_uncertain = ~np.isin(others, POSITIVE).any(axis=1) & anything
    assert only_uncertain.any() and (no_finding[only_uncertain] == BLANK).all()
    # CheXpert's rule: support devices alone leave the study a "no finding" one.
    devices_only = (labels[:, COLUMN["support_devices"]] == POSITIVE) & ~anything
    assert devices_only.any() and (no_finding[devices_only] == POSITIVE).all()


# A deliberately simple sentence-level labeler: keyword mention, then the sentence's cue.
MENTIONS = {
    "enlarged_cardiomediastinum": r"mediastin",
    "cardiomegaly": r"cardiomegaly|heart|cardiac|cardiomediastinal",
    "lung_opacity": r"opacit",
    "lung_lesion": r"nodule|mass",
    "edema": r"edema",
    "consolidation": r"consolidation",
    "pneumonia": r"pneumonia",
    "atelectasis": r"atelectasis",
    "pneumothorax": r"pneumothorax",
    "pleural_effusion": r"effusion",
    "pleural_other": r"pleural thickening",
    "fracture": r"fracture",
    "support_devices": r"tube|catheter|\bline\b|pacemaker|wires",
}
CLEAR_LUNGS = re.compile(r"\blungs are .*clear")
CLEARED = ("lung_opacity", "consolidation", "edema", "pneumonia")
UNCERTAINTY = re.compile(r"\b(possible|cannot|may|questionable)\b")
NEGATION = re.compile(r"\b(no|not|normal)\b")
NO_FINDING = re.compile(r"^no (acute cardiopulmonary|active disease)")


def _keyword_labels(report: str) -> list[int]:
    labels = [BLANK] * len(OBSERVATIONS)
    for sentence in report.lower().rstrip(".").split(". "):
        if NO_FINDING.search(sentence):
            labels[COLUMN["no_finding"]] = POSITIVE
            continue
        if CLEAR_LUNGS.search(sentence):
            for name in CLEARED:
                labels[COLUMN[name]] = NEGATIVE
            continue
        cue = (
            UNCERTAIN
            if UNCERTAINTY.search(sentence)
            else NEGATIVE
            if NEGATION.search(sentence)
            else POSITIVE
        )
        for name, pattern in MENTIONS.items():
            if re.search(pattern, sentence):
                assert labels[COLUMN[name]] in (BLANK, cue) or name in CLEARED, (name, report)
                labels[COLUMN[name]] = cue
    return labels


def test_reports_state_exactly_the_labels(label_sample):
    labels, reports = label_sample
    recovered = np.array([_keyword_labels(r) for r in reports])
    mismatched = np.argwhere(recovered != labels)
    assert len(mismatched) == 0, [reports[i] for i in mismatched[:3, 0]]


def test_reports_have_negations_uncertainty_and_variety(label_sample):
    _, reports = label_sample
    text = " ".join(reports).lower()
    for phrase in (
        "no pleural effusion",
        "pneumothorax",
        "cannot exclude pneumonia",
        "possible small",
        "may represent atelectasis",
        "heart size is normal",
        "no acute cardiopulmonary process",
        "lungs are clear",
    ):
        assert phrase in text, phrase
    assert len(set(reports)) > 0.5 * len(reports)
    first_sentences = {r.split(". ")[0] for r in reports}
    assert len(first_sentences) > 100  # sentence order and wording vary


def _auc(score, positive):
    ranks = np.argsort(np.argsort(score)) + 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _region(images, v0, v1, u0, u1):
    n = images.shape[-1]
    return images[:, int(v0 * n) : int(v1 * n), int(u0 * n) : int(u1 * n)]


def _separates(score, labels, name):
    column = labels[:, COLUMN[name]]
    keep = column != UNCERTAIN
    assert (column == POSITIVE).sum() >= 10, name
    return _auc(score[keep], column[keep] == POSITIVE)


def test_cardiomegaly_widens_the_heart_on_the_image(image_sample):
    images, labels = image_sample
    heart_width = (_region(images, 0.6, 0.68, 0.15, 0.85).mean(axis=1) > 0.6).sum(axis=1)
    assert _separates(heart_width, labels, "cardiomegaly") > 0.95


def test_effusion_fills_the_costophrenic_angle(image_sample):
    images, labels = image_sample
    right = _region(images, 0.68, 0.76, 0.14, 0.22).mean(axis=(1, 2))
    left = _region(images, 0.70, 0.78, 0.78, 0.86).mean(axis=(1, 2))
    assert _separates(np.maximum(right, left), labels, "pleural_effusion") > 0.95


def test_support_devices_are_metal_bright(image_sample):
    images, labels = image_sample
    brightest = images.reshape(len(images), -1).max(axis=1)
    assert _separates(brightest, labels, "support_devices") > 0.98


DRAWN = [
    Finding("enlarged_cardiomediastinum", severity=1),
    Finding("cardiomegaly", severity=1),
    Finding("lung_opacity", side="right", zone="lower", severity=1),
    Finding("lung_lesion", side="left", zone="upper"),
    Finding("edema", severity=1),
    Finding("consolidation", side="left", zone="mid"),
    Finding("pneumonia", side="right", zone="lower"),
    Finding("atelectasis", side="bilateral"),
    Finding("pneumothorax", side="left", severity=1),
    Finding("pleural_effusion", side="right", severity=1),
    Finding("pleural_other", side="left", zone="upper", severity=1),
    Finding("fracture", side="right", rib=6),
    Finding("support_devices", devices=("endotracheal_tube", "central_line")),
]


@pytest.mark.parametrize("finding", DRAWN, ids=lambda f: f.name)
def test_every_label_is_drawn_and_uncertain_ones_faintly(finding):
    def draw(present):
        return render_views(make_study_findings(present), np.random.default_rng(0), num_views=2)

    normal, positive = draw([]), draw([finding])
    change = np.abs(positive - normal).sum()
    assert change > 0.5, change  # summed |change| over pixels; 0 if nothing were drawn
    if finding.name != "support_devices":  # devices are never hedged
        uncertain = draw([Finding(**{**finding.__dict__, "state": UNCERTAIN})])
        assert 0.05 < np.abs(uncertain - normal).sum() < change


def test_pneumothorax_is_an_apical_lucency():
    ptx = Finding("pneumothorax", side="right", severity=2)
    normal = render_views(make_study_findings([]), np.random.default_rng(1), num_views=1)[0]
    image = render_views(make_study_findings([ptx]), np.random.default_rng(1), num_views=1)[0]
    # Patient's right is the image's left; the apex is the top of the lung field.
    apex = (slice(8, 24), slice(6, 20))
    assert image[apex].mean() < normal[apex].mean() - 0.02
    other_side = (slice(8, 24), slice(44, 58))
    assert np.array_equal(image[other_side], normal[other_side])


def test_make_study_findings_rejects_contradictions():
    with pytest.raises(ValueError, match="twice"):
        make_study_findings([Finding("edema")], negated=["edema"])
    with pytest.raises(ValueError, match="derived"):
        make_study_findings([], negated=["no_finding"])
    with pytest.raises(ValueError, match="device"):
        Finding("support_devices")
    with pytest.raises(ValueError, match="lungs_clear"):
        make_study_findings([Finding("atelectasis", side="left")], lungs_clear=True)
    cleared = make_study_findings([], lungs_clear=True)
    assert {OBSERVATIONS[i] for i, x in enumerate(cleared.labels) if x == NEGATIVE} == {
        "lung_opacity",
        "consolidation",
        "edema",
        "pneumonia",
    }
