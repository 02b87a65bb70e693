"""Deterministic synthetic chest-radiograph data set: the embedded default, no download needed.

Each study is drawn from ``(seed, split, index)`` alone: its findings (labels with side,
severity and location) are sampled first, then the report is written and the images are drawn
from those same findings. The same seed gives the same data set bit for bit, and study ``i`` of
a split does not depend on the split's size.

Two generators exist, chosen by :attr:`SyntheticConfig.generator`:

* ``"v2"`` (the default): realistic data in which the double dilemma of multi-task report
  generation can occur: varied anatomy and acquisition, class-conditional overlap of the
  cardiothoracic ratio, look-alikes and findings outside the 14 labels, devices at varied and
  wrong positions, silhouette signs, reports with technique, comparison, FINDINGS and
  IMPRESSION sections and CheXpert-style hedges, and image/report disagreement at documented
  rates (``_synthetic_v2_findings``, ``_synthetic_v2_report``, ``_synthetic_v2_image``).
* ``"v1"``: the original cartoon data set (``_synthetic_findings``, ``_synthetic_report``,
  ``_synthetic_image``), in which report, labels and images agree by construction; kept
  unchanged so that the results measured on it reproduce exactly.

Example:
  >>> from camegrad_jax.rrg.synthetic import SyntheticConfig, generate_synthetic
  >>> splits = generate_synthetic(SyntheticConfig(num_train=4, num_val=2, num_test=2))
  >>> splits["train"].images.shape, splits["train"].labels.shape
  ((4, 2, 64, 64), (4, 14))
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from camegrad_jax.rrg._synthetic_findings import (
    Finding,
    StudyFindings,
    make_study_findings,
    sample_study_findings,
)
from camegrad_jax.rrg._synthetic_image import render_views
from camegrad_jax.rrg._synthetic_report import write_report
from camegrad_jax.rrg._synthetic_v2_findings import Study, sample_study
from camegrad_jax.rrg._synthetic_v2_image import render_views as render_views_v2
from camegrad_jax.rrg._synthetic_v2_report import write_report as write_report_v2
from camegrad_jax.rrg.data import (
    DATASET_VIEWS,
    DEFAULT_MAX_LEN,
    SPLITS,
    RawSplit,
    RRGDataset,
    build_dataset,
)
from camegrad_jax.rrg.observations import NUM_OBSERVATIONS
from camegrad_jax.rrg.tokenizer import Tokenizer

__all__ = [
    "GENERATORS",
    "Finding",
    "Study",
    "StudyFindings",
    "SyntheticConfig",
    "generate_synthetic",
    "make_study_findings",
    "render_views",
    "synthetic_dataset",
    "synthetic_study",
    "write_r2gen_layout",
    "write_report",
]

_SPLIT_CODES = {split: code for code, split in enumerate(SPLITS)}
GENERATORS: tuple[str, ...] = ("v1", "v2")  # see the module docstring


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of the synthetic data set.

    The defaults (2000/250/250 studies, two 64x64 views) generate in about 9 s of CPU time
    (v2; v1 takes about 30 % less) and let the reference model train in minutes on two CPU
    cores.

    Attributes:
      seed: the data set's seed; different seeds give different data sets.
      num_train, num_val, num_test: studies per split.
      image_size: square image side in pixels (64 or 128 are sensible).
      num_views: 2 (frontal + lateral, IU X-Ray style) or 1 (frontal, MIMIC-CXR style).
      generator: ``"v2"`` (realistic, the default) or ``"v1"`` (the original data set, for
        exact reproduction of results measured on it); see the module docstring.
    """

    seed: int = 0
    num_train: int = 2000
    num_val: int = 250
    num_test: int = 250
    image_size: int = 64
    num_views: int = 2
    generator: str = "v2"

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ValueError(
                f"`generator` should be one of {GENERATORS}. Found `{self.generator!r}`."
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` should be a non-negative int. Found `{self.seed!r}`.")
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"`{name}` should be a positive int. Found `{getattr(self, name)}`."
                )
        if self.num_views not in (1, 2):
            raise ValueError(f"`num_views` should be 1 or 2. Found `{self.num_views}`.")
        if self.image_size < 16:
            raise ValueError(f"`image_size` should be at least 16. Found `{self.image_size}`.")

    @property
    def dataset_name(self) -> str:
        """The real data set this one mimics: ``"iu_xray"`` (2 views) or ``"mimic_cxr"`` (1)."""
        return next(name for name, views in DATASET_VIEWS.items() if views == self.num_views)

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}


def _study_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    # Independent streams for findings, wording and pixels: labels can be sampled without
    # drawing images, and they are identical either way.
    return np.random.default_rng([seed, _SPLIT_CODES[split], index, stream])


def synthetic_study(
    seed: int,
    split: str,
    index: int,
    *,
    image_size: int | None = 64,
    num_views: int = 2,
    generator: str = "v2",
) -> tuple[StudyFindings | Study, str, np.ndarray | None]:
    """Study ``index`` of ``split``: its findings, its report and its images.

    Args:
      seed, split, index: identify the study.
      image_size: image side; ``None`` skips drawing (fast, for label statistics).
      num_views: 1 or 2.
      generator: ``"v2"`` or ``"v1"`` (see the module docstring).

    Returns:
      ``(findings, report, images)``: ``findings`` is a v2 :class:`Study` or a v1
      :class:`StudyFindings` (both have ``labels``), images float32 ``(num_views, size, size)``
      in [0, 1].
    """
    if generator not in GENERATORS:
        raise ValueError(f"`generator` should be one of {GENERATORS}. Found `{generator!r}`.")
    if generator == "v2":
        study = sample_study(_study_rng(seed, split, index, 0))
        report = write_report_v2(study, _study_rng(seed, split, index, 1), num_views=num_views)
        if image_size is None:
            return study, report, None
        pixels = render_views_v2(
            study, _study_rng(seed, split, index, 2), image_size=image_size, num_views=num_views
        )
        return study, report, pixels
    findings = sample_study_findings(_study_rng(seed, split, index, 0))
    report = write_report(findings, _study_rng(seed, split, index, 1))
    if image_size is None:
        return findings, report, None
    images = render_views(
        findings, _study_rng(seed, split, index, 2), image_size=image_size, num_views=num_views
    )
    return findings, report, images


def generate_synthetic(config: SyntheticConfig | None = None) -> dict[str, RawSplit]:
    """Generate the data set: ``{"train", "val", "test"}`` to :class:`RawSplit`."""
    config = config or SyntheticConfig()
    splits = {}
    for split, count in config.split_sizes.items():
        size, views = config.image_size, config.num_views
        images = np.empty((count, views, size, size), np.float32)
        labels = np.empty((count, NUM_OBSERVATIONS), np.int32)
        reports = []
        for index in range(count):
            findings, report, pixels = synthetic_study(
                config.seed,
                split,
                index,
                image_size=size,
                num_views=views,
                generator=config.generator,
            )
            images[index], labels[index] = pixels, findings.labels
            reports.append(report)
        ids = tuple(f"synthetic_{split}_{index:05d}" for index in range(count))
        splits[split] = RawSplit(ids=ids, reports=tuple(reports), images=images, labels=labels)
    return splits


def synthetic_dataset(
    config: SyntheticConfig | None = None,
    *,
    max_len: int = DEFAULT_MAX_LEN,
    tokenizer: Tokenizer | None = None,
    threshold: int | None = None,
) -> RRGDataset:
    """Generate the synthetic data set and encode it in memory (no files written).

    The dataset name (cleaning rule, default vocabulary threshold) follows ``num_views``:
    ``"iu_xray"`` for two views, ``"mimic_cxr"`` for one.
    """
    config = config or SyntheticConfig()
    return build_dataset(
        generate_synthetic(config),
        dataset_name=config.dataset_name,
        max_len=max_len,
        tokenizer=tokenizer,
        threshold=threshold,
    )


def write_r2gen_layout(
    source: SyntheticConfig | Mapping[str, RawSplit], out_dir: str | Path
) -> Path:
    """Write studies in R2Gen's layout: ``out_dir/annotation.json`` and ``out_dir/images/``.

    Entries are ``{"id", "report", "image_path", "split", "labels"}``; view ``v`` of study
    ``id`` is the 8-bit PNG ``images/<id>/<v>.png`` (R2Gen's IU X-Ray naming), so
    ``data.load_dataset(out_dir / "annotation.json", dataset_name=...)`` reads it back
    (up to 8-bit quantisation of the pixels).

    Args:
      source: a :class:`SyntheticConfig` to generate, or splits already generated or read.
      out_dir: created if needed.

    Returns:
      The path of ``annotation.json``.
    """
    splits = generate_synthetic(source) if isinstance(source, SyntheticConfig) else source
    out = Path(out_dir)
    annotation: dict[str, list[dict]] = {}
    for split in SPLITS:
        data = splits[split]
        annotation[split] = []
        for index, study_id in enumerate(data.ids):
            if not study_id or "/" in study_id or "\\" in study_id or study_id in (".", ".."):
                raise ValueError(f"Study id {study_id!r} cannot name an image folder.")
            folder = out / "images" / study_id
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            for view, pixels in enumerate(data.images[index]):
                quantised = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
                Image.fromarray(quantised).save(folder / f"{view}.png")
                paths.append(f"{study_id}/{view}.png")
            annotation[split].append(
                {
                    "id": study_id,
                    "report": data.reports[index],
                    "image_path": paths,
                    "split": split,
                    "labels": [int(x) for x in data.labels[index]],
                }
            )
    ann_path = out / "annotation.json"
    ann_path.write_text(json.dumps(annotation), encoding="utf-8")
    return ann_path
