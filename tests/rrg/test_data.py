"""Tests for the in-memory data set and its batch iterator (the R2Gen-layout reader has
test_annotation.py)."""

import doctest

import numpy as np
import pytest

from camegrad_jax.rrg.data import (
    base_probs,
    build_dataset,
    positive_rate,
)
from camegrad_jax.rrg.synthetic import (
    SyntheticConfig,
    generate_synthetic,
    synthetic_dataset,
)
from camegrad_jax.rrg.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@pytest.fixture(scope="module")
def tiny():
    config = SyntheticConfig(seed=1, num_train=10, num_val=3, num_test=3, image_size=16)
    return synthetic_dataset(config, max_len=12)


def test_batches_shapes_dtypes_and_padding(tiny):
    batches = list(tiny.iterate_batches("train", 4, seed=0, epoch=0, shuffle=True))
    assert [len(b["labels"]) for b in batches] == [4, 4, 2]
    batch = batches[0]
    assert set(batch) == {"images", "tokens", "labels"}
    assert batch["images"].shape == (4, 2, 16, 16, 1) and batch["images"].dtype == np.float32
    assert batch["tokens"].shape == (4, 12) and batch["tokens"].dtype == np.int32
    assert batch["labels"].shape == (4, 14) and batch["labels"].dtype == np.int32
    tokens = np.concatenate([b["tokens"] for b in batches])
    assert (tokens[:, 0] == BOS_ID).all()
    for row in tokens:
        if EOS_ID in row:  # everything after EOS is padding, nothing before it is
            end = int(np.argmax(row == EOS_ID))
            assert (row[end + 1 :] == PAD_ID).all() and (row[:end] != PAD_ID).all()
        else:  # truncated at max_len
            assert (row != PAD_ID).all()
    assert tiny.num_batches("train", 4, drop_last=False) == 3
    assert tiny.num_batches("train", 4, drop_last=True) == 2


def test_batches_are_deterministic_per_seed_and_epoch(tiny):
    def order(**kwargs):
        return np.concatenate(list(tiny.batch_indices("train", 3, **kwargs)))

    first = order(seed=7, epoch=2, shuffle=True)
    assert np.array_equal(first, order(seed=7, epoch=2, shuffle=True))  # resumed run
    assert sorted(first.tolist()) == list(range(10))  # each study once per epoch
    assert not np.array_equal(first, order(seed=7, epoch=3, shuffle=True))
    assert not np.array_equal(first, order(seed=8, epoch=2, shuffle=True))
    assert np.array_equal(order(), np.arange(10))  # no shuffle: file order
    dropped = order(seed=7, epoch=2, shuffle=True, drop_last=True)
    assert np.array_equal(dropped, first[:9])
    batch = next(tiny.iterate_batches("val", 2, seed=7, epoch=2, shuffle=True))
    index = next(tiny.batch_indices("val", 2, seed=7, epoch=2, shuffle=True))
    assert np.array_equal(batch["labels"], tiny.splits["val"].labels[index])
    assert np.array_equal(batch["images"][..., 0], tiny.splits["val"].images[index])


def test_batch_arguments_are_checked(tiny):
    with pytest.raises(ValueError, match="no batch"):
        next(tiny.iterate_batches("val", 4, drop_last=True))
    with pytest.raises(ValueError, match="split"):
        next(tiny.iterate_batches("dev", 2))
    with pytest.raises(ValueError, match="seed"):
        next(tiny.iterate_batches("train", 2, seed=-1, shuffle=True))


def test_positive_rate_and_base_probs():
    labels = np.zeros((4, 14), np.int32)
    labels[:2, 0] = 1  # positive in half the studies
    labels[0, 1] = 1  # a quarter
    labels[:, 2] = 3  # uncertain does not count
    assert positive_rate(labels)[:3].tolist() == [0.5, 0.25, 0.0]
    probs = base_probs(labels, floor=1e-3)
    assert probs.dtype == np.float32
    assert probs[:3].tolist() == pytest.approx([1.0, 0.5, 1e-3])
    assert np.isfinite(np.log(probs)).all()
    assert base_probs(np.zeros((3, 14)), floor=0.01).tolist() == pytest.approx([0.01] * 14)


def test_dataset_base_probs_use_training_labels(tiny):
    expected = base_probs(tiny.splits["train"].labels)
    assert np.array_equal(tiny.base_probs(), expected)
    assert tiny.positive_rate("test").shape == (14,)


def test_build_dataset_reuses_tokenizer_and_statistics():
    raw = generate_synthetic(SyntheticConfig(num_train=4, num_val=2, num_test=2, image_size=16))
    tokenizer = Tokenizer.from_reports(["No effusion."], threshold=1)
    ds = build_dataset(
        raw, dataset_name="iu_xray", tokenizer=tokenizer, image_mean=0.5, image_std=0.25
    )
    assert ds.tokenizer is tokenizer
    assert np.allclose(ds.splits["val"].images, (raw["val"].images - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        build_dataset(raw, dataset_name="mimic_cxr")  # two views given, one expected


def test_docstring_examples_run():
    from camegrad_jax.rrg import data, synthetic

    for module in (data, synthetic):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
