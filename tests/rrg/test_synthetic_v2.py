"""Tests for the default (v2) synthetic data set: determinism, the v1 data kept reachable,
CheXpert-labellable reports, the documented image/report disagreement rates, overlapping
measurements, vocabulary and length."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from camegrad_jax.rrg import _synthetic_v2_findings as v2
from camegrad_jax.rrg._synthetic_findings import sample_study_findings
from camegrad_jax.rrg._synthetic_image import render_views as render_v1
from camegrad_jax.rrg._synthetic_report import write_report as write_v1
from camegrad_jax.rrg._synthetic_v2_image import render_views
from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.labeler_agreement import labeler_agreement
from camegrad_jax.rrg.metrics import roc_auc
from camegrad_jax.rrg.observations import BLANK, OBSERVATIONS, POSITIVE, UNCERTAIN
from camegrad_jax.rrg.synthetic import SyntheticConfig, generate_synthetic, synthetic_study
from camegrad_jax.rrg.tokenizer import clean_report

SMALL = SyntheticConfig(seed=5, num_train=12, num_val=4, num_test=4, image_size=32)
N = 1500  # as many training reports as the vocabulary target counts


@pytest.fixture(scope="module")
def sample():
    """Studies and reports of 1500 training studies (no images: fast)."""
    out = [synthetic_study(7, "train", i, image_size=None) for i in range(N)]
    return [study for study, _, _ in out], [report for _, report, _ in out]


def test_v2_is_the_default():
    assert SyntheticConfig().generator == "v2"
    with pytest.raises(ValueError, match="`generator`"):
        SyntheticConfig(generator="v3")


def test_same_seed_same_data_bit_for_bit_and_another_seed_differs():
    first, second = generate_synthetic(SMALL), generate_synthetic(SMALL)
    for split in ("train", "val", "test"):
        assert first[split].reports == second[split].reports
        assert first[split].images.tobytes() == second[split].images.tobytes()
        assert np.array_equal(first[split].labels, second[split].labels)
    other = generate_synthetic(dataclasses.replace(SMALL, seed=6))["train"]
    assert other.reports != first["train"].reports
    assert not np.array_equal(other.images, first["train"].images)


def test_study_does_not_depend_on_split_size_and_frontal_not_on_view_count():
    small = generate_synthetic(SMALL)["train"]
    larger = dataclasses.replace(SMALL, num_train=20, num_views=1)
    larger = generate_synthetic(larger)["train"]
    assert np.array_equal(small.labels, larger.labels[:12])
    assert np.array_equal(small.images[:, 0], larger.images[:12, 0])
    assert small.images.min() >= 0.0 and small.images.max() <= 1.0


def test_v1_data_is_unchanged():
    # sha256 of the reports and labels of this v1 configuration, computed with the generator
    # as it was before v2 existed (commit daf3b77, where this configuration had no `generator`).
    config = SyntheticConfig(
        seed=5, num_train=40, num_val=4, num_test=4, image_size=16, generator="v1"
    )
    splits = generate_synthetic(config)
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        digest.update(json.dumps(splits[name].reports).encode())
        digest.update(splits[name].labels.tobytes())
    assert digest.hexdigest() == (
        "fa6b5ad6f47c92ad55b9b7775182a3517c620ed68b8c702a530655e293c81bc5"
    )
    # The images are v1's renderer's, study by study.
    findings = sample_study_findings(np.random.default_rng([5, 0, 3, 0]))
    assert write_v1(findings, np.random.default_rng([5, 0, 3, 1])) == splits["train"].reports[3]
    pixels = render_v1(findings, np.random.default_rng([5, 0, 3, 2]), image_size=16, num_views=2)
    assert np.array_equal(pixels, splits["train"].images[3])


def test_reports_have_sections_technique_and_comparison(sample):
    studies, reports = sample
    for study, report in zip(studies, reports, strict=True):
        head, rest = report.split(" FINDINGS: ")
        findings, impression = rest.split(" IMPRESSION: ")
        assert any(word in head for word in ("view", "chest", "thorax"))
        assert findings and impression
        abnormal = any(
            f.state == POSITIVE and f.name != "support_devices" for f in study.findings.present
        )
        if abnormal:  # an abnormal study's impression states a finding, not "no acute ..."
            assert "no acute" not in impression.lower()
    lower = [r.lower() for r in reports]
    for phrase in (
        "comparison",
        "unchanged",
        "stable",
        "new ",
        "has resolved",
        "which may",
        "cannot be excluded",
        "without",
        "but no",
    ):
        assert sum(phrase in r for r in lower) >= 10, phrase
    for phrase in ("granuloma", "degenerative", "hyperinflated", "tortuous", "clips"):
        assert any(phrase in r for r in lower), phrase


def test_vocabulary_and_length_targets(sample):
    _, reports = sample
    # R2Gen's cleaning keeps "." as a token; words are the other tokens.
    words = [[w for w in clean_report(r, "iu_xray").split() if w != "."] for r in reports]
    vocabulary = {w for ws in words for w in ws}
    assert len(vocabulary) >= 600
    assert np.mean([len(ws) for ws in words]) >= 30


def test_reports_are_labellable_by_chexpert_conventions(sample):
    studies, reports = sample
    gold = np.array([s.labels for s in studies])
    # The generator's gold labels follow the "lungs are clear" convention (opacity, edema,
    # consolidation and pneumonia negative), which the labeler applies on request only.
    agreement = labeler_agreement(label_reports(reports, lungs_clear_negates=True), gold)
    # The rule-based labeler reads CheXpert's conventions; measured 0.997 overall accuracy when
    # written, a bound that leaves room for the labeler to change.
    assert agreement.overall_accuracy >= 0.98
    assert agreement.exact_match >= 0.9


def test_label_rules(sample):
    studies, _ = sample
    index = {name: i for i, name in enumerate(OBSERVATIONS)}
    for s in studies:
        labels = s.labels
        others = [labels[i] for n, i in index.items() if n not in ("no_finding", "support_devices")]
        reported_other = any(
            n not in v2.DEVICE_LIKE + v2.NORMAL_VARIANTS for n in s.reported_incidentals()
        )
        # `no_finding` is positive iff no finding but devices is positive or uncertain and no
        # "other" abnormality is reported (CheXpert), never negative.
        expected = not any(v in (POSITIVE, UNCERTAIN) for v in others) and not reported_other
        assert (labels[index["no_finding"]] == POSITIVE) == expected
        for hidden in s.hidden:  # an omitted finding has a blank label
            assert labels[index[hidden.name]] == BLANK
        for name in s.no_new:  # "no new X" is uncertain (CheXpert) and is not drawn
            assert labels[index[name]] == UNCERTAIN and s.visibility(name) == 0.0
        if any(n in v2.DEVICE_LIKE for n in s.reported_incidentals()):
            assert labels[index["support_devices"]] == POSITIVE


def _binomial_bound(rate: float, n: int) -> float:
    return 4.0 * np.sqrt(rate * (1 - rate) / n) + 1e-9


def test_image_report_disagreement_rates_are_the_documented_ones(sample):
    studies, _ = sample
    positives = [
        s.visibility(f.name)
        for s in studies
        for f in s.findings.present
        if f.state == POSITIVE and f.name != "support_devices"
    ]
    subtle = np.mean([v < 1.0 for v in positives])
    assert abs(subtle - v2.SUBTLE_RATE) < _binomial_bound(v2.SUBTLE_RATE, len(positives))
    assert all(v == 1.0 or 0.25 <= v <= 0.5 for v in positives)
    hidden = np.mean([bool(s.hidden) for s in studies])
    # Hidden findings need an eligible blank label, which almost every study has.
    assert abs(hidden - v2.HIDDEN_RATE) < _binomial_bound(v2.HIDDEN_RATE, len(studies))
    incidental = [reported for s in studies for _, reported in s.incidentals]
    rate = np.mean(incidental)
    assert abs(rate - v2.INCIDENTAL_REPORT_RATE) < _binomial_bound(0.6, len(incidental))


def test_uncertain_means_the_wording_not_the_drawing(sample):
    studies, _ = sample
    uncertain = np.array(
        [
            s.visibility(f.name)
            for s in studies
            for f in s.findings.present
            if f.state == UNCERTAIN and f.name not in s.no_new
        ]
    )
    # Uniform on [0, 0.9]: faint and clearly visible uncertain findings both occur, and
    # overlap the subtle positives (0.25-0.5).
    assert uncertain.min() < 0.1 and uncertain.max() > 0.8
    assert 0.2 < np.mean((uncertain >= 0.25) & (uncertain <= 0.5)) < 0.35


def test_cardiothoracic_ratio_overlaps_between_classes(sample):
    studies, _ = sample
    apparent = np.array([s.ctr * s.acquisition.magnification for s in studies])
    positive = np.array([s.findings.label("cardiomegaly") == POSITIVE for s in studies])
    assert apparent[~positive].max() > apparent[positive].min()
    auc = roc_auc(apparent, positive)
    # The ratio informs (AUROC well above chance) without deciding (v1: exactly 1.0).
    assert 0.75 < auc < 0.97


def test_acquisition_varies(sample):
    studies, _ = sample
    acq = [s.acquisition for s in studies]
    ap = np.mean([a.projection == "AP" for a in acq])
    assert 0.15 < ap < 0.6
    for field in ("body", "inspiration", "rotation", "gain", "gamma", "offset", "noise"):
        values = np.array([getattr(a, field) for a in acq])
        assert values.std() > 0.01, field


def test_malpositioned_devices_occur_and_are_reported(sample):
    studies, reports = sample
    tips = [(s, tip, r) for s, r in zip(studies, reports, strict=True) for tip in s.device_tips]
    wrong = [(s, tip, r) for s, tip, r in tips if tip[1] != next(iter(v2.DEVICE_TIPS[tip[0]]))]
    assert 0.03 < len(wrong) / len(tips) < 0.3
    for _, (_, _, variant), report in wrong:
        assert variant in report


def _one_study(**changes) -> v2.Study:
    study = synthetic_study(7, "train", 0, image_size=None)[0]
    return dataclasses.replace(study, **changes)


def test_hidden_finding_is_drawn_and_a_no_new_one_is_not(sample):
    studies, _ = sample
    study = next(s for s in studies if s.hidden and s.hidden[0].name == "lung_lesion")
    with_hidden = render_views(study, np.random.default_rng(0), image_size=64, num_views=1)
    without = render_views(
        dataclasses.replace(study, hidden=()),
        np.random.default_rng(0),
        image_size=64,
        num_views=1,
    )
    assert np.abs(with_hidden - without).max() > 0.1
    study = next(s for s in studies if s.no_new)
    kept = tuple(f for f in study.findings.present if f.name not in study.no_new)
    findings = dataclasses.replace(study.findings, present=kept)
    a = render_views(study, np.random.default_rng(0), image_size=64)
    b = render_views(
        dataclasses.replace(study, findings=findings), np.random.default_rng(0), image_size=64
    )
    assert np.array_equal(a, b)


def test_train_config_selects_the_generator_and_older_configs_read_as_v1():
    from camegrad_jax.rrg.config import TrainConfig

    assert TrainConfig().synthetic_config().generator == "v2"
    assert TrainConfig(synthetic_generator="v1").synthetic_config().generator == "v1"
    stored = TrainConfig().to_dict()
    del stored["synthetic_generator"]  # a config.json written before v2 existed
    assert TrainConfig.from_dict(stored).synthetic_generator == "v1"
    with pytest.raises(ValueError, match="`synthetic_generator`"):
        TrainConfig(synthetic_generator="v3")
