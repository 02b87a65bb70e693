"""Tests for the R2Gen-style report cleaning and tokenizer."""

import numpy as np
import pytest

from camegrad_jax.rrg.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Tokenizer,
    clean_report,
    clean_report_iu_xray,
    clean_report_mimic_cxr,
)

# Expected outputs worked out by hand from R2Gen's `clean_report_iu_xray`.
IU_CASES = [
    ("The heart is normal. The lungs are clear.", "the heart is normal . the lungs are clear ."),
    # '1. ' is deleted, '. 2. ' becomes '. '.
    ("1. No acute disease. 2. Stable cardiomegaly.", "no acute disease . stable cardiomegaly ."),
    # " / \ ' are deleted; then . , ? ; * ! % ^ & _ + ( ) and the range ':' to '[' go.
    (
        'Heart size: normal; "no" effusion (left) x-ray, 3/4 view? done!',
        "heart size normal no effusion left x-ray 34 view done .",
    ),
    # The range ':'-'[' removes < = > @ [ but keeps the hyphen; removal leaves double spaces.
    ("a <b> = c @ d [e] {f}", "a b  c  d e f ."),
    # Empty sentences are kept (R2Gen's `!= []` filter never removes anything).
    ("Normal. . Clear.", "normal .  . clear ."),
    # Only three '..' -> '.' passes: 16 dots become 2, and '.. ' still splits.
    ("Normal" + "." * 16 + " Clear", "normal . clear ."),
    # IU does not touch newlines, so no sentence split happens at '.\n'.
    ("Heart normal.\nLungs clear.", "heart normal\nlungs clear ."),
    ("Plate-like atelectasis.", "plate-like atelectasis ."),
]


@pytest.mark.parametrize(("report", "expected"), IU_CASES)
def test_iu_cleaning_matches_r2gen_rule(report, expected):
    assert clean_report_iu_xray(report) == expected
    assert clean_report(report) == expected  # the IU rule is the default


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        # Newlines become spaces, so '.\n' now splits sentences.
        ("Heart normal.\nLungs clear.", "heart normal . lungs clear ."),
        # Runs of '_' collapse, '_' is then removed, leaving a double space.
        ("Patient ___ has effusion.", "patient  has effusion ."),
        (
            "FINDINGS:\n\nThe  lungs are clear.... ___ No effusion.",
            "findings the lungs are clear .  no effusion .",
        ),
    ],
)
def test_mimic_cleaning_matches_r2gen_rule(report, expected):
    assert clean_report_mimic_cxr(report) == expected
    assert clean_report(report, "mimic_cxr") == expected


def test_unknown_dataset_name_is_rejected():
    with pytest.raises(ValueError, match="dataset_name"):
        clean_report("x", "chexpert")


REPORTS = [
    "The heart is normal. No effusion.",
    "The heart is enlarged. No effusion.",
    "The heart is normal. Small effusion.",
    "Lungs are clear. No pneumothorax.",
]


def test_vocabulary_threshold_and_fixed_ids():
    tokenizer = Tokenizer.from_reports(REPORTS, threshold=3)
    # Counts: '.' 8; the, heart, is, no, effusion 3; normal 2; the rest 1.
    assert tokenizer.id_to_token[:4] == SPECIAL_TOKENS
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert list(tokenizer.id_to_token[4:]) == [".", "effusion", "heart", "is", "no", "the"]
    assert "normal" not in tokenizer.token_to_id  # seen twice, below the threshold
    assert Tokenizer.from_reports(REPORTS, threshold=2).token_to_id["normal"] > UNK_ID


def test_default_thresholds_follow_r2gen():
    ten = ["alpha beta."] * 9 + ["alpha."]
    assert "alpha" in Tokenizer.from_reports(ten, dataset_name="mimic_cxr").token_to_id
    assert "beta" not in Tokenizer.from_reports(ten, dataset_name="mimic_cxr").token_to_id
    assert "beta" in Tokenizer.from_reports(ten[:3], dataset_name="iu_xray").token_to_id
    assert Tokenizer.from_reports(ten[:2]).threshold == 3


def test_encode_decode_round_trip_and_unk():
    tokenizer = Tokenizer.from_reports(REPORTS * 3)
    report = "The heart is enlarged. Lungs are clear, no pneumothorax."
    ids = tokenizer.encode(report, max_len=64)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert tokenizer.decode(ids) == " ".join(clean_report_iu_xray(report).split())
    unknown = tokenizer.encode("The heart is xyzzy.", max_len=64)
    assert unknown[4] == UNK_ID
    assert tokenizer.decode(unknown) == "the heart is <unk> ."


def test_encode_truncates_like_r2gen():
    tokenizer = Tokenizer.from_reports(REPORTS * 3)
    ids = tokenizer.encode("The heart is normal. No effusion.", max_len=5)
    assert len(ids) == 5 and ids[0] == BOS_ID and EOS_ID not in ids
    assert len(tokenizer.encode("No effusion.", max_len=64)) == 5  # BOS no effusion . EOS


def test_decode_skips_pad_and_bos_and_stops_at_eos():
    tokenizer = Tokenizer.from_reports(REPORTS * 3)
    heart, effusion = tokenizer.token_to_id["heart"], tokenizer.token_to_id["effusion"]
    assert tokenizer.decode([BOS_ID, heart, PAD_ID, effusion, EOS_ID, heart]) == "heart effusion"
    assert tokenizer.decode(np.array([heart, EOS_ID])) == "heart"


def test_batch_helpers_pad_with_pad_id():
    tokenizer = Tokenizer.from_reports(REPORTS * 3)
    batch = tokenizer.encode_batch(["No effusion.", "The heart is normal. No effusion."], 12)
    assert batch.dtype == np.int32 and batch.shape == (2, 12)
    assert batch[0].tolist() == tokenizer.encode("No effusion.", 12) + [PAD_ID] * 7
    assert tokenizer.decode_batch(batch) == ["no effusion .", "the heart is normal . no effusion ."]


def test_save_load_round_trip(tmp_path):
    tokenizer = Tokenizer.from_reports(REPORTS * 3, dataset_name="mimic_cxr", threshold=2)
    tokenizer.save(tmp_path / "tokenizer.json")
    restored = Tokenizer.load(tmp_path / "tokenizer.json")
    assert restored == tokenizer
    assert restored.encode(REPORTS[1], 20) == tokenizer.encode(REPORTS[1], 20)
    assert restored != Tokenizer.from_reports(REPORTS * 3, dataset_name="mimic_cxr")


def test_load_rejects_other_json(tmp_path):
    (tmp_path / "other.json").write_text('{"vocab": []}')
    with pytest.raises(ValueError, match="not a tokenizer file"):
        Tokenizer.load(tmp_path / "other.json")
