"""Evaluation of a model on a split: decode, detokenise, score.

Reports are decoded greedily (``beam_size=1``) or by beam search, detokenised, and scored
against the references cleaned by the same tokenizer (R2Gen's cleaning, untruncated) with
:func:`camegrad_jax.rrg.metrics.evaluate_reports`: NLG (BLEU-1..4, METEOR when asked, ROUGE-L)
and clinical efficacy under both protocols, both sides labelled by the rule-based labeler. The
auxiliary head is scored from :func:`classification_probs` against the gold labels
(``aux_*``); a model whose auxiliary task is alignment (no label head, see
:mod:`camegrad_jax.rrg.aux_tasks`) is scored by image→report retrieval instead
(``aux_retrieval_r1``, ``aux_retrieval_r5``). Which val metric selects the best checkpoint is
``TrainConfig.selection_metric`` (by default ``ce_example_f1``, the paper's protocol).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from camegrad_jax.rrg.aux_tasks import AlignedRRGModel, retrieval_metrics
from camegrad_jax.rrg.data import RRGDataset
from camegrad_jax.rrg.decoding import beam_search_decode, classification_probs, greedy_decode
from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.metrics import auxiliary_head_metrics, evaluate_reports
from camegrad_jax.rrg.model import RRGModel

__all__ = ["evaluate_split", "generate_reports"]


def generate_reports(
    model: RRGModel,
    dataset: RRGDataset,
    split: str,
    *,
    beam_size: int = 1,
    max_len: int | None = None,
    batch_size: int = 64,
) -> tuple[list[str], np.ndarray | None]:
    """Generated reports (detokenised) and label probabilities (N, 14, 4) for ``split``
    (None for a model without a label head).

    Every batch is padded to ``batch_size`` so that decoding compiles once per shape.
    """
    data = dataset.splits[split]
    reports: list[str] = []
    probs = []
    label_head = not isinstance(model, AlignedRRGModel)
    for index in dataset.batch_indices(split, batch_size):
        images = data.images[index][..., None]
        count = len(index)
        if count < batch_size:
            padding = np.zeros((batch_size - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, padding])
        if beam_size == 1:
            tokens = greedy_decode(model, images, max_len)
        else:
            tokens = beam_search_decode(model, images, beam_size, max_len)
        tokens = jax.device_get(tokens)
        reports.extend(dataset.tokenizer.decode_batch(tokens[:count]))
        if label_head:
            probs.append(jax.device_get(classification_probs(model, images))[:count])
    return reports, np.concatenate(probs) if label_head else None


def evaluate_split(
    model: RRGModel,
    dataset: RRGDataset,
    split: str,
    *,
    beam_size: int = 1,
    max_len: int | None = None,
    batch_size: int = 64,
    meteor: bool = False,
    labeler: Callable[[Sequence[str]], np.ndarray] = label_reports,
) -> tuple[dict[str, float | None | str], list[str]]:
    """Metrics of ``model`` on ``split``, and the generated reports.

    Returns:
      ``(metrics, generated)``: metrics as `evaluate_reports` names them, plus ``aux_*`` of
      `auxiliary_head_metrics` (of `retrieval_metrics` for an alignment model),
      ``num_reports`` and ``mean_generated_words``.
    """
    generated, probs = generate_reports(
        model, dataset, split, beam_size=beam_size, max_len=max_len, batch_size=batch_size
    )
    data = dataset.splits[split]
    references = [dataset.tokenizer.clean(report) for report in data.reports]
    metrics = evaluate_reports(generated, references, labeler, meteor=meteor)
    if probs is None:
        aux = retrieval_metrics(model, data.images[..., None], data.tokens, batch_size=batch_size)
    else:
        aux = auxiliary_head_metrics(probs, data.labels)
    for name, value in aux.items():
        metrics[f"aux_{name}"] = value
    metrics["num_reports"] = len(generated)
    metrics["mean_generated_words"] = float(np.mean([len(r.split()) for r in generated]))
    return metrics, generated
