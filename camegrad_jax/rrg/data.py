"""Radiology report data held in memory as numpy arrays, and its deterministic batches.

:func:`load_dataset` reads R2Gen's ``annotation.json`` layout (checked entry by entry by
:func:`read_annotation`, which raises :class:`AnnotationError` naming the entry and field of the
first problem) and :func:`build_dataset` turns read or generated splits into an
:class:`RRGDataset`: reports tokenized with a vocabulary built on the training reports, images
normalised with the training mean and std, labels as 14 ints in {0, 1, 2, 3}.

Example:
  >>> from camegrad_jax.rrg.synthetic import SyntheticConfig, synthetic_dataset
  >>> ds = synthetic_dataset(SyntheticConfig(num_train=8, num_val=2, num_test=2, image_size=32))
  >>> batch = next(ds.iterate_batches("train", 4, seed=0, epoch=0, shuffle=True))
  >>> for name, value in batch.items():
  ...     print(name, value.shape, value.dtype)
  images (4, 2, 32, 32, 1) float32
  tokens (4, 60) int32
  labels (4, 14) int32
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from camegrad_jax.rrg._annotation import (
    DATASET_VIEWS,
    SPLITS,
    AnnotationError,
    LabelFn,
    RawSplit,
    check_dataset_name,
    check_positive,
    read_annotation,
)
from camegrad_jax.rrg.observations import POSITIVE
from camegrad_jax.rrg.tokenizer import Tokenizer

__all__ = [
    "DATASET_VIEWS",
    "DEFAULT_MAX_LEN",
    "SPLITS",
    "AnnotationError",
    "EncodedSplit",
    "LabelFn",
    "RRGDataset",
    "RawSplit",
    "base_probs",
    "build_dataset",
    "load_dataset",
    "positive_rate",
    "read_annotation",
]

DEFAULT_MAX_LEN = 60  # R2Gen's `max_seq_length` for IU X-Ray


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
    """One split ready for training: normalised images and token ids.

    Attributes:
      ids: study ids.
      reports: raw report text (references for NLG metrics).
      images: float32 ``(N, V, H, W)``, normalised with the data set's mean and std.
      tokens: int32 ``(N, max_len)``: ``BOS ... EOS`` then ``PAD_ID`` (see ``Tokenizer.encode``).
      labels: int32 ``(N, 14)`` in {0, 1, 2, 3}.
    """

    ids: tuple[str, ...]
    reports: tuple[str, ...]
    images: np.ndarray
    tokens: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def positive_rate(labels: np.ndarray) -> np.ndarray:
    """Fraction of studies labelled POSITIVE, per observation: float32 ``(14,)``."""
    return (np.asarray(labels) == POSITIVE).mean(axis=0).astype(np.float32)


def base_probs(labels: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Logit-adjustment priors: positive rate over its maximum, floored so ``log`` is finite.

    Args:
      labels: int ``(N, 14)`` training labels.
      floor: smallest returned value (also used for every observation if none is positive).

    Returns:
      float32 ``(14,)`` in ``[floor, 1]``.
    """
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"`floor` should be in (0, 1]. Found `{floor}`.")
    rate = positive_rate(labels)
    peak = rate.max()
    scaled = rate / peak if peak > 0 else np.zeros_like(rate)
    return np.maximum(scaled, floor).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class RRGDataset:
    """Train/val/test splits in memory, with the tokenizer and image statistics used.

    Attributes:
      splits: ``{"train", "val", "test"}`` to :class:`EncodedSplit`.
      tokenizer: built on the training reports (or given); save it with a checkpoint.
      dataset_name: ``"iu_xray"`` or ``"mimic_cxr"``.
      image_mean, image_std: the normalisation applied to every split.
      max_len: the token length ``T`` of every batch.
    """

    splits: Mapping[str, EncodedSplit]
    tokenizer: Tokenizer
    dataset_name: str
    image_mean: float
    image_std: float
    max_len: int

    @property
    def num_views(self) -> int:
        return self.splits["train"].images.shape[1]

    @property
    def image_size(self) -> int:
        return self.splits["train"].images.shape[-1]

    def positive_rate(self, split: str = "train") -> np.ndarray:
        """Per-observation POSITIVE rate of ``split``: float32 ``(14,)``."""
        return positive_rate(self._split(split).labels)

    def base_probs(self, floor: float = 1e-3) -> np.ndarray:
        """Logit-adjustment priors from the *training* labels (see :func:`base_probs`)."""
        return base_probs(self.splits["train"].labels, floor)

    def num_batches(self, split: str, batch_size: int, *, drop_last: bool) -> int:
        """How many batches one pass of :meth:`iterate_batches` yields."""
        n = len(self._split(split))
        check_positive("batch_size", batch_size)
        return n // batch_size if drop_last else -(-n // batch_size)

    def batch_indices(
        self,
        split: str,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> Iterator[np.ndarray]:
        """Row indices of each batch; the order depends only on ``(seed, epoch)``.

        The permutation is drawn from ``np.random.default_rng([seed, epoch])``, so a resumed run
        that restarts at epoch ``e`` sees exactly the batches of an uninterrupted one. Use the
        indices to fetch ``ids`` and ``reports`` of a batch from ``splits[split]``.
        """
        n = len(self._split(split))
        if self.num_batches(split, batch_size, drop_last=drop_last) == 0:
            raise ValueError(
                f"`batch_size` {batch_size} exceeds the {n} studies of split {split!r} with "
                "`drop_last=True`: no batch would be produced."
            )
        for name, value in (("seed", seed), ("epoch", epoch)):
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"`{name}` should be a non-negative int. Found `{value!r}`.")
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield order[start : start + batch_size]

    def iterate_batches(
        self,
        split: str,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``{"images", "tokens", "labels"}`` of ``split``.

        ``images``: float32 ``(B, V, H, W, 1)`` (channels last, normalised); ``tokens``: int32
        ``(B, max_len)``, ``BOS ... EOS`` right-padded with ``PAD_ID=0`` (EOS is cut when a
        report is longer than ``max_len - 2`` words); ``labels``: int32 ``(B, 14)``.
        ``B == batch_size`` except for a last partial batch when ``drop_last`` is False.
        Deterministic given ``(seed, epoch)``; see :meth:`batch_indices`.
        """
        data = self._split(split)
        for index in self.batch_indices(
            split, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last
        ):
            yield {
                "images": data.images[index][..., None],
                "tokens": data.tokens[index],
                "labels": data.labels[index],
            }

    def _split(self, split: str) -> EncodedSplit:
        if split not in self.splits:
            raise ValueError(f"`split` should be one of {SPLITS}. Found `{split!r}`.")
        return self.splits[split]


def build_dataset(
    raw: Mapping[str, RawSplit],
    *,
    dataset_name: str,
    max_len: int = DEFAULT_MAX_LEN,
    tokenizer: Tokenizer | None = None,
    threshold: int | None = None,
    image_mean: float | None = None,
    image_std: float | None = None,
) -> RRGDataset:
    """Tokenize reports and normalise images of already-read splits.

    Args:
      raw: ``{"train", "val", "test"}`` to :class:`RawSplit` (from :func:`read_annotation` or
        the synthetic generator).
      dataset_name: ``"iu_xray"`` or ``"mimic_cxr"``: cleaning rule, default threshold, views.
      max_len: token length of every encoded report, BOS and EOS included.
      tokenizer: reuse this tokenizer (e.g. restored from a checkpoint) instead of building one
        from the training reports.
      threshold: vocabulary frequency threshold when building the tokenizer (R2Gen's defaults:
        3 for IU X-Ray, 10 for MIMIC-CXR).
      image_mean, image_std: normalisation; each defaults to the training images' statistic.
    """
    check_dataset_name(dataset_name)
    check_positive("max_len", max_len)
    if sorted(raw) != sorted(SPLITS):
        raise ValueError(f"`raw` should have splits {SPLITS}. Found {tuple(raw)}.")
    for split, data in raw.items():
        if len(data) == 0:
            raise ValueError(f"Split {split!r} is empty.")
        if data.images.ndim != 4 or data.images.shape[1] != DATASET_VIEWS[dataset_name]:
            raise ValueError(
                f"Split {split!r}: images of shape {data.images.shape}, expected "
                f"(N, {DATASET_VIEWS[dataset_name]}, H, W) for {dataset_name!r}."
            )
    if tokenizer is None:
        tokenizer = Tokenizer.from_reports(
            raw["train"].reports, dataset_name=dataset_name, threshold=threshold
        )
    elif tokenizer.dataset_name != dataset_name:
        raise ValueError(
            f"The tokenizer cleans reports for {tokenizer.dataset_name!r}, not {dataset_name!r}."
        )
    train_images = raw["train"].images
    mean = float(train_images.mean(dtype=np.float64)) if image_mean is None else image_mean
    std = float(train_images.std(dtype=np.float64)) if image_std is None else image_std
    if not std > 0:
        raise ValueError(f"Image std should be positive. Found `{std}`.")
    splits = {
        split: EncodedSplit(
            ids=tuple(data.ids),
            reports=tuple(data.reports),
            images=((data.images - np.float32(mean)) / np.float32(std)).astype(np.float32),
            tokens=tokenizer.encode_batch(data.reports, max_len),
            labels=np.asarray(data.labels, dtype=np.int32),
        )
        for split, data in ((s, raw[s]) for s in SPLITS)
    }
    return RRGDataset(splits, tokenizer, dataset_name, mean, std, max_len)


def load_dataset(
    ann_path: str | Path,
    image_dir: str | Path | None = None,
    *,
    dataset_name: str = "iu_xray",
    image_size: int = 64,
    max_len: int = DEFAULT_MAX_LEN,
    label_fn: LabelFn | None = None,
    tokenizer: Tokenizer | None = None,
    threshold: int | None = None,
    image_mean: float | None = None,
    image_std: float | None = None,
) -> RRGDataset:
    """:func:`read_annotation` then :func:`build_dataset`; arguments as there."""
    raw = read_annotation(
        ann_path, image_dir, dataset_name=dataset_name, image_size=image_size, label_fn=label_fn
    )
    return build_dataset(
        raw,
        dataset_name=dataset_name,
        max_len=max_len,
        tokenizer=tokenizer,
        threshold=threshold,
        image_mean=image_mean,
        image_std=image_std,
    )
