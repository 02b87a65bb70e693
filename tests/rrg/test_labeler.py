"""Tests for the rule-based labeler, the CheXbert back end's error paths and labeler agreement."""

from __future__ import annotations

import doctest
import importlib.util

import numpy as np
import pytest

from camegrad_jax.rrg import labeler
from camegrad_jax.rrg.chexbert import CheXbertLabeler
from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.labeler_agreement import labeler_agreement
from camegrad_jax.rrg.observations import (
    BLANK,
    NEGATIVE,
    NUM_LABEL_CLASSES,
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


def _pretend_installed(monkeypatch, installed):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in ("torch", "transformers"):
            return object() if name in installed else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_chexbert_without_torch_says_what_is_missing(monkeypatch, tmp_path):
    _pretend_installed(monkeypatch, installed={"transformers"})
    with pytest.raises(ImportError, match="needs torch,") as info:
        CheXbertLabeler(tmp_path / "chexbert.pth")
    assert "does not exist" in str(info.value)  # the missing checkpoint is reported too


def test_chexbert_without_either_package(monkeypatch, tmp_path):
    _pretend_installed(monkeypatch, installed=set())
    with pytest.raises(ImportError, match="needs torch and transformers"):
        CheXbertLabeler(tmp_path / "chexbert.pth")


def test_chexbert_without_checkpoint(monkeypatch, tmp_path):
    _pretend_installed(monkeypatch, installed={"torch", "transformers"})
    path = tmp_path / "missing" / "chexbert.pth"
    with pytest.raises(FileNotFoundError, match="CheXbert checkpoint not found") as info:
        CheXbertLabeler(path)
    assert str(path) in str(info.value)


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


# A CheXbert-shaped model small enough to build in a test: BERT with one layer of width 16, the
# 13 four-way heads and the two-way no_finding head, saved the way the CheXbert authors saved
# theirs (`nn.DataParallel` keys under "model_state_dict").
_TINY_VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] . , no mild small left right pleural effusion cardiomegaly "
    "pneumothorax the lungs are clear heart is enlarged tube in place"
).split()
REPORTS = [
    "No pleural effusion.",
    "Mild cardiomegaly, small left pleural effusion.",
    "The lungs are clear.",
    "Right pneumothorax. Tube in place. The heart is enlarged.",
    "",
]


def _tiny_chexbert(tmp_path, *, heads_bias=None, wrap=True, prefix="module.", drop=None):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir(exist_ok=True)
    config = transformers.BertConfig(
        vocab_size=len(_TINY_VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    config.save_pretrained(bert_dir)
    (bert_dir / "vocab.txt").write_text("\n".join(_TINY_VOCAB) + "\n")
    torch.manual_seed(0)
    sizes = [NUM_LABEL_CLASSES] * (NUM_OBSERVATIONS - 1) + [2]
    heads = torch.nn.ModuleList([torch.nn.Linear(16, n) for n in sizes])
    if heads_bias is not None:
        with torch.no_grad():
            for head, label in zip(heads, heads_bias, strict=True):
                head.weight.zero_()
                head.bias.copy_(
                    10.0 * torch.nn.functional.one_hot(torch.tensor(label), len(head.bias))
                )
    model = torch.nn.ModuleDict({"bert": transformers.BertModel(config), "linear_heads": heads})
    state = {prefix + key: value for key, value in model.state_dict().items() if key != drop}
    path = tmp_path / "chexbert.pth"
    torch.save({"model_state_dict": state} if wrap else state, path)
    return model.eval(), bert_dir, path


def test_chexbert_loads_the_heads_of_a_stub_checkpoint(tmp_path):
    wanted = [P, N, U, BLANK, P, N, U, BLANK, P, N, U, BLANK, P, P]  # no_finding: 1 of 2
    _, bert_dir, path = _tiny_chexbert(tmp_path, heads_bias=wanted)
    chexbert = CheXbertLabeler(path, bert_name_or_path=str(bert_dir), device="cpu")
    labels = chexbert(REPORTS)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.tile(wanted, (len(REPORTS), 1)))


@pytest.mark.parametrize(("wrap", "prefix"), [(True, "module."), (False, "")])
def test_chexbert_matches_a_forward_pass_of_the_stub(tmp_path, wrap, prefix):
    """The labels are the arg-max of each head on BERT's [CLS] state, report by report: batching
    and padding change nothing."""
    model, bert_dir, path = _tiny_chexbert(tmp_path, wrap=wrap, prefix=prefix)  # or skips
    import torch
    import transformers

    chexbert = CheXbertLabeler(path, bert_name_or_path=str(bert_dir), device="cpu", batch_size=2)
    tokenizer = transformers.BertTokenizer(str(bert_dir / "vocab.txt"))
    expected = []
    with torch.no_grad():
        for report in REPORTS:
            cls = model["bert"](**tokenizer(report, return_tensors="pt")).last_hidden_state[:, 0]
            expected.append([int(head(cls).argmax()) for head in model["linear_heads"]])
    labels = chexbert(REPORTS)
    np.testing.assert_array_equal(labels, np.array(expected))
    assert set(labels[:, -1]) <= {BLANK, POSITIVE}


def test_chexbert_rejects_a_checkpoint_of_another_model(tmp_path):
    _, bert_dir, path = _tiny_chexbert(tmp_path, drop="linear_heads.3.weight")
    with pytest.raises(ValueError, match="is not a CheXbert checkpoint") as info:
        CheXbertLabeler(path, bert_name_or_path=str(bert_dir), device="cpu")
    assert str(path) in str(info.value) and "linear_heads.3.weight" in str(info.value)


def test_chexbert_never_downloads_bert(tmp_path):
    _, _, path = _tiny_chexbert(tmp_path)
    missing = tmp_path / "no-bert-here"
    with pytest.raises(FileNotFoundError, match="`bert_name_or_path`") as info:
        CheXbertLabeler(path, bert_name_or_path=str(missing), device="cpu")
    assert str(missing) in str(info.value)
