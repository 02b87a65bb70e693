"""Agreement of predicted report labels with gold labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from camegrad_jax.rrg.observations import (
    BLANK,
    NUM_LABEL_CLASSES,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
)


@dataclass(frozen=True)
class LabelerAgreement:
    """How well predicted labels match gold labels (see `labeler_agreement`).

    Attributes:
      accuracy: ``(14,)`` fraction of reports whose 4-way label matches, per observation.
      positive_f1: ``(14,)`` F1 of the positive class (label 1 vs the rest) per observation;
        NaN where neither side has a positive (F1 is undefined there).
      positive_support: ``(14,)`` number of gold positives per observation.
      overall_accuracy: fraction of all ``N × 14`` labels that match.
      nonblank_agreement: fraction of matching labels among the cells where either side is not
        blank, ``|{pred = gold ≠ blank}| / |{pred ≠ blank or gold ≠ blank}|``: a missed label
        (gold stated, predicted blank or different) and a spurious one (gold blank, predicted
        stated) both count against it, and cells both sides leave blank, which dominate
        ``overall_accuracy``, do not count for it. NaN when every cell is blank on both sides.
      exact_match: fraction of reports whose 14 labels all match.
      positive_f1_macro: mean of the defined entries of ``positive_f1``.
      positive_f1_micro: positive-class F1 with TP/FP/FN pooled over all observations.
    """

    accuracy: np.ndarray
    positive_f1: np.ndarray
    positive_support: np.ndarray
    overall_accuracy: float
    nonblank_agreement: float
    exact_match: float
    positive_f1_macro: float
    positive_f1_micro: float

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: value}``: the overall numbers, then ``accuracy/<obs>`` and
        ``positive_f1/<obs>`` per observation."""
        flat = {
            "overall_accuracy": self.overall_accuracy,
            "nonblank_agreement": self.nonblank_agreement,
            "exact_match": self.exact_match,
            "positive_f1_macro": self.positive_f1_macro,
            "positive_f1_micro": self.positive_f1_micro,
        }
        for name, acc, f1 in zip(OBSERVATIONS, self.accuracy, self.positive_f1, strict=True):
            flat[f"accuracy/{name}"] = float(acc)
            flat[f"positive_f1/{name}"] = float(f1)
        return flat

    def table(self) -> str:
        """A Markdown table: one row per observation, then the overall numbers."""
        rows = ["| observation | accuracy | positive F1 | gold positives |", "|---|---|---|---|"]
        for name, acc, f1, n in zip(
            OBSERVATIONS, self.accuracy, self.positive_f1, self.positive_support, strict=True
        ):
            f1_text = "n/a" if np.isnan(f1) else f"{f1:.3f}"
            rows.append(f"| {name} | {acc:.3f} | {f1_text} | {int(n)} |")
        rows.append(
            f"| **overall** | {self.overall_accuracy:.3f} | macro {self.positive_f1_macro:.3f}"
            f" / micro {self.positive_f1_micro:.3f} | {int(self.positive_support.sum())} |"
        )
        rows.append(f"| **non-blank cells** | {self.nonblank_agreement:.3f} | | |")
        return "\n".join(rows)


def check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Returns ``labels`` as an int array after checking it is ``(N, 14)`` with values 0–3."""
    array = np.asarray(labels)
    if array.ndim != 2 or array.shape[1] != NUM_OBSERVATIONS:
        raise ValueError(
            f"`{name}` should have shape (N, {NUM_OBSERVATIONS}). Found shape {array.shape}."
        )
    if array.size and not np.all(np.isin(array, np.arange(NUM_LABEL_CLASSES))):
        raise ValueError(f"`{name}` should hold labels in {{0, 1, 2, 3}}.")
    return array.astype(np.int64)


def labeler_agreement(predicted: np.ndarray, gold: np.ndarray) -> LabelerAgreement:
    """Agreement of a labeler's ``predicted`` labels with ``gold`` labels.

    Args:
      predicted: ``(N, 14)`` labels in {0, 1, 2, 3}, e.g. ``label_reports(reports)``.
      gold: ``(N, 14)`` reference labels for the same reports.

    Returns:
      A `LabelerAgreement`: per-observation 4-way accuracy and positive-class F1, and overall
      accuracy, agreement on non-blank cells, exact match and macro / micro positive F1.
    """
    predicted = check_labels(predicted, "predicted")
    gold = check_labels(gold, "gold")
    if predicted.shape != gold.shape:
        raise ValueError(
            f"`predicted` and `gold` should have the same shape. Found {predicted.shape} and "
            f"{gold.shape}."
        )
    if not len(gold):
        raise ValueError("`gold` should hold at least one report.")
    pred_pos, gold_pos = predicted == POSITIVE, gold == POSITIVE
    tp = (pred_pos & gold_pos).sum(0)
    fp = (pred_pos & ~gold_pos).sum(0)
    fn = (~pred_pos & gold_pos).sum(0)
    denominator = tp + 0.5 * (fp + fn)
    with np.errstate(invalid="ignore", divide="ignore"):
        positive_f1 = np.where(denominator > 0, tp / denominator, np.nan)
    pooled = tp.sum() + 0.5 * (fp.sum() + fn.sum())
    defined = positive_f1[~np.isnan(positive_f1)]
    equal = predicted == gold
    stated = (predicted != BLANK) | (gold != BLANK)
    return LabelerAgreement(
        accuracy=equal.mean(0),
        positive_f1=positive_f1,
        positive_support=gold_pos.sum(0),
        overall_accuracy=float(equal.mean()),
        nonblank_agreement=float(equal[stated].mean()) if stated.any() else float("nan"),
        exact_match=float(equal.all(1).mean()),
        positive_f1_macro=float(defined.mean()) if defined.size else float("nan"),
        positive_f1_micro=float(tp.sum() / pooled) if pooled > 0 else float("nan"),
    )
