"""Reading R2Gen's ``annotation.json`` layout, with every malformation reported.

Layout (R2Gen, github.com/cuhksz-nlp/R2Gen): ``{"train": [...], "val": [...], "test": [...]}``,
each entry ``{"id", "report", "image_path": [paths relative to the image folder], "split"}``
and, here, an optional ``"labels"`` list of 14 ints in {0 blank, 1 positive, 2 negative,
3 uncertain} in the order of ``OBSERVATIONS``. IU X-Ray entries have two views, MIMIC-CXR entries
one. Other keys (MIMIC's ``study_id``, ``subject_id``) are ignored.

Malformed input raises :class:`AnnotationError`, naming the file, the entry and the field, at
the first problem found; nothing is skipped silently. The public names are re-exported by
``camegrad_jax.rrg.data``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from camegrad_jax.rrg.observations import NUM_LABEL_CLASSES, NUM_OBSERVATIONS

SPLITS: tuple[str, ...] = ("train", "val", "test")
DATASET_VIEWS: dict[str, int] = {"iu_xray": 2, "mimic_cxr": 1}
LabelFn = Callable[[Sequence[str]], np.ndarray]


class AnnotationError(ValueError):
    """Malformed annotation file, entry or image.

    Attributes:
      path: the annotation file.
      split: the split holding the bad entry, if any.
      entry_id: the entry's ``id`` (or ``"#<index>"`` when the id itself is missing), if any.
      field: the offending field (``"id"``, ``"report"``, ``"image_path"``, ``"split"``,
        ``"labels"``, or a split name for a bad split), if any.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | Path,
        split: str | None = None,
        entry_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.path, self.split, self.entry_id, self.field = Path(path), split, entry_id, field
        where = [f"split {split!r}"] if split is not None else []
        where += [f"entry {entry_id!r}"] if entry_id is not None else []
        where += [f"field {field!r}"] if field is not None else []
        super().__init__(
            f"{path}: {', '.join(where)}: {problem}" if where else f"{path}: {problem}"
        )


@dataclasses.dataclass(frozen=True)
class RawSplit:
    """One split's studies as read or generated, before tokenization and normalisation.

    Attributes:
      ids: study ids.
      reports: raw report text.
      images: float32 ``(N, V, H, W)`` in [0, 1].
      labels: int32 ``(N, 14)`` in {0, 1, 2, 3}.
    """

    ids: tuple[str, ...]
    reports: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def check_dataset_name(dataset_name: str) -> None:
    if dataset_name not in DATASET_VIEWS:
        raise ValueError(
            f"`dataset_name` should be one of {sorted(DATASET_VIEWS)}. Found `{dataset_name!r}`."
        )


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` should be a positive int. Found `{value!r}`.")


def _check_labels(labels: Any) -> str | None:
    """Why ``labels`` is not 14 ints in {0, 1, 2, 3}, or None if it is."""
    expected = f"expected a list of {NUM_OBSERVATIONS} ints in {{0, 1, 2, 3}}"
    if not isinstance(labels, list):
        return f"{expected}, found {type(labels).__name__}"
    if len(labels) != NUM_OBSERVATIONS:
        return f"{expected}, found {len(labels)} values"
    bad = [x for x in labels if isinstance(x, bool) or not isinstance(x, int)]
    bad += [x for x in labels if isinstance(x, int) and not 0 <= x < NUM_LABEL_CLASSES]
    return f"{expected}, found {bad[0]!r}" if bad else None


@dataclasses.dataclass(frozen=True)
class _Entry:
    id: str
    report: str
    image_paths: tuple[str, ...]
    labels: list[int] | None


def _parse_entry(
    entry: Any, index: int, split: str, num_views: int, path: Path, need_labels: bool
) -> _Entry:
    if not isinstance(entry, dict):
        raise AnnotationError(
            f"entry is a {type(entry).__name__}, expected an object",
            path=path,
            split=split,
            entry_id=f"#{index}",
        )
    if "id" not in entry:
        raise AnnotationError("missing", path=path, split=split, entry_id=f"#{index}", field="id")
    entry_id = entry["id"]
    if not isinstance(entry_id, str) or not entry_id:
        raise AnnotationError(
            f"expected a non-empty string, found {entry_id!r}",
            path=path,
            split=split,
            entry_id=f"#{index}",
            field="id",
        )

    def fail(problem: str, field: str) -> AnnotationError:
        return AnnotationError(problem, path=path, split=split, entry_id=entry_id, field=field)

    for field in ("report", "image_path", "split"):
        if field not in entry:
            raise fail("missing", field)
    if entry["split"] != split:
        raise fail(f"says {entry['split']!r} but the entry is listed under {split!r}", "split")
    report = entry["report"]
    if not isinstance(report, str):
        raise fail(f"expected a string, found {type(report).__name__}", "report")
    if not report.strip():
        raise fail("empty report", "report")
    paths = entry["image_path"]
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise fail(f"expected a list of relative paths, found {paths!r}", "image_path")
    if len(paths) != num_views:
        raise fail(f"expected {num_views} view(s), found {len(paths)}", "image_path")
    labels = entry.get("labels")
    if labels is None and need_labels:
        raise fail("missing, and no `label_fn` was given to label the report", "labels")
    if labels is not None and (problem := _check_labels(labels)) is not None:
        raise fail(problem, "labels")
    return _Entry(entry_id, report, tuple(paths), labels)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(f"cannot read the annotation file ({error})", path=path) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise AnnotationError(
            f"invalid JSON at line {error.lineno}, column {error.colno} (char {error.pos}): "
            f"{error.msg}",
            path=path,
        ) from error


def _load_image(path: Path, image_size: int) -> np.ndarray:
    """Grayscale float32 ``(image_size, image_size)`` in [0, 1]."""
    with Image.open(path) as image:
        image.load()
        # 16-bit PNGs open as "I;16" (or "I" in older Pillow): `convert("L")` would clip them.
        if image.mode.startswith("I;16") or image.mode == "I":
            pixels = np.asarray(image, dtype=np.float32) / 65535.0
        elif image.mode == "F":
            raise ValueError("unsupported floating-point image; convert to 8 or 16 bit")
        else:
            pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if pixels.shape != (image_size, image_size):
        resized = Image.fromarray(pixels).resize(
            (image_size, image_size), Image.Resampling.BILINEAR
        )
        pixels = np.asarray(resized, dtype=np.float32)
    return np.clip(pixels, 0.0, 1.0)


def read_annotation(
    ann_path: str | Path,
    image_dir: str | Path | None = None,
    *,
    dataset_name: str = "iu_xray",
    image_size: int = 64,
    label_fn: LabelFn | None = None,
) -> dict[str, RawSplit]:
    """Read and check an R2Gen ``annotation.json`` and its images.

    Args:
      ann_path: the annotation file.
      image_dir: folder the ``image_path`` entries are relative to; defaults to ``images/``
        next to ``ann_path`` (R2Gen's ``--image_dir``).
      dataset_name: ``"iu_xray"`` (two views per entry) or ``"mimic_cxr"`` (one).
      image_size: images are converted to grayscale and resized to this square size.
      label_fn: labels the reports of entries without ``labels``, e.g. a rule-based labeler:
        maps a sequence of N reports to ints ``(N, 14)`` in {0, 1, 2, 3}. Without it every
        entry needs ``labels``.

    Returns:
      ``{"train", "val", "test"}`` to :class:`RawSplit`.

    Raises:
      AnnotationError: on the first malformed part, naming entry and field.
    """
    check_dataset_name(dataset_name)
    check_positive("image_size", image_size)
    path = Path(ann_path)
    image_root = Path(image_dir) if image_dir is not None else path.parent / "images"
    annotation = _read_json(path)
    if not isinstance(annotation, dict):
        raise AnnotationError(f"expected an object, found {type(annotation).__name__}", path=path)
    entries: dict[str, list[_Entry]] = {}
    seen: dict[str, str] = {}
    for split in SPLITS:
        items = annotation.get(split)
        if split not in annotation or not isinstance(items, list) or not items:
            if split not in annotation:
                problem = "missing split"
            elif isinstance(items, list):
                problem = "empty split: expected at least one entry"
            else:
                problem = f"expected a list of entries, found {type(items).__name__}"
            raise AnnotationError(problem, path=path, field=split)
        entries[split] = []
        for index, item in enumerate(items):
            entry = _parse_entry(
                item, index, split, DATASET_VIEWS[dataset_name], path, label_fn is None
            )
            if entry.id in seen:
                raise AnnotationError(
                    f"duplicate id (also in split {seen[entry.id]!r})",
                    path=path,
                    split=split,
                    entry_id=entry.id,
                    field="id",
                )
            seen[entry.id] = split
            entries[split].append(entry)
    return {
        split: _materialise(path, split, items, image_root, image_size, label_fn)
        for split, items in entries.items()
    }


def _materialise(
    path: Path,
    split: str,
    entries: list[_Entry],
    image_root: Path,
    image_size: int,
    label_fn: LabelFn | None,
) -> RawSplit:
    images = np.empty(
        (len(entries), len(entries[0].image_paths), image_size, image_size), np.float32
    )
    for row, entry in enumerate(entries):
        for view, relative in enumerate(entry.image_paths):
            file = image_root / relative
            try:
                images[row, view] = _load_image(file, image_size)
            except FileNotFoundError as error:
                raise AnnotationError(
                    f"image file not found: {file}",
                    path=path,
                    split=split,
                    entry_id=entry.id,
                    field="image_path",
                ) from error
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise AnnotationError(
                    f"cannot read image {file}: {error}",
                    path=path,
                    split=split,
                    entry_id=entry.id,
                    field="image_path",
                ) from error
    labels = np.zeros((len(entries), NUM_OBSERVATIONS), np.int32)
    unlabelled = [row for row, entry in enumerate(entries) if entry.labels is None]
    for row, entry in enumerate(entries):
        if entry.labels is not None:
            labels[row] = entry.labels
    if unlabelled:
        assert label_fn is not None  # `_parse_entry` demands labels otherwise
        labels[unlabelled] = _call_label_fn(
            label_fn, [entries[row] for row in unlabelled], path, split
        )
    return RawSplit(
        ids=tuple(e.id for e in entries),
        reports=tuple(e.report for e in entries),
        images=images,
        labels=labels,
    )


def _call_label_fn(label_fn: LabelFn, entries: list[_Entry], path: Path, split: str) -> np.ndarray:
    produced = np.asarray(label_fn([e.report for e in entries]))
    if produced.shape != (len(entries), NUM_OBSERVATIONS):
        raise AnnotationError(
            f"`label_fn` returned shape {produced.shape}, expected "
            f"{(len(entries), NUM_OBSERVATIONS)}",
            path=path,
            split=split,
            field="labels",
        )
    invalid = ~np.isin(produced, np.arange(NUM_LABEL_CLASSES))
    if invalid.any():
        row = int(np.argwhere(invalid)[0, 0])
        raise AnnotationError(
            f"`label_fn` produced {produced[row].tolist()}, expected values in {{0, 1, 2, 3}}",
            path=path,
            split=split,
            entry_id=entries[row].id,
            field="labels",
        )
    return produced.astype(np.int32)
