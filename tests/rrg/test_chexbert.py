"""The CheXbert back end: its error paths without torch, transformers or a checkpoint, and a
tiny CheXbert-shaped stub checkpoint against a forward pass of its own model."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from camegrad_jax.rrg.chexbert import CheXbertLabeler
from camegrad_jax.rrg.observations import (
    BLANK,
    NEGATIVE,
    NUM_LABEL_CLASSES,
    NUM_OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)

P, N, U = POSITIVE, NEGATIVE, UNCERTAIN


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
