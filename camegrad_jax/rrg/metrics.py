"""Metrics for generated reports: NLG, clinical efficacy (CE), and the auxiliary head.

* NLG: BLEU-1..4, METEOR and ROUGE-L from ``pycocoevalcap`` on ``{i: [text]}`` dicts, as in
  R2Gen, PromptMRG and the CAME-Grad code. Reports are expected already cleaned; only runs of
  whitespace are collapsed (ROUGE splits on single spaces, METEOR reads one line per report).
  METEOR runs a Java program (pycocoevalcap's ``meteor-1.5.jar``, driven here with the same
  protocol as pycocoevalcap's ``Meteor`` class, which deadlocks in ``__del__`` after a failed
  call): if ``java`` is missing, cannot start, crashes or does not answer within
  ``meteor_timeout`` seconds, METEOR is reported as ``None`` with a warning and a note giving
  the reason, and the other scores are still computed.
* CE: both reports are labelled (rule-based labeler by default), then one of two protocols:

  - **example-based** (PromptMRG's ``compute_ce``, the paper's Section 4.2): a label counts as
    present when it is positive (1). Per report, over the 14 observations,
    ``P_i = TP/(TP+FP)``, ``R_i = TP/(TP+FN)``, ``F1_i = TP/(TP + (FP+FN)/2)``, each 0 when
    its denominator is 0 (PromptMRG's ``np.nan_to_num``); the scores are means over reports.
    So a report with no positive label on either side scores 0 on all three, and so does
    precision for a report whose generated side has no positive.
  - **label-macro** (the released CAME-Grad code): a label counts as present when it is
    positive or uncertain (1 or 3). Per observation, over reports, the same P, R and F1 with
    0/0 taken as 0; the scores are means over the 14 observations.

  "CE Avg." in the paper's tables is the mean of CE precision, recall and F1; it is reported
  per protocol as ``..._avg``.

  Both protocols are also reported without the ``no_finding`` observation (``..._no_nf_...``):
  with it, a constant normal report scores well on the many normal studies (example-based
  F1 about 0.5 on the v1 synthetic data), so a model can score by writing "normal"; over the
  13 findings alone it scores only on the findings it gets right.
* Auxiliary head (the paper's Appendix F): positive class against the rest, per observation,
  from predicted probabilities; macro and micro AUC, precision, recall and F1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.meteor import meteor as pycoco_meteor
from pycocoevalcap.rouge.rouge import Rouge

from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.labeler_agreement import check_labels
from camegrad_jax.rrg.observations import (
    NUM_LABEL_CLASSES,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)

# The 13 findings: every observation but `no_finding`.
_FINDING_COLUMNS = np.array([i for i, name in enumerate(OBSERVATIONS) if name != "no_finding"])

Labeler = Callable[[Sequence[str]], np.ndarray]

METEOR_MISSING_NOTE = (
    "METEOR not computed: no `java` executable on the PATH (pycocoevalcap's METEOR runs "
    "meteor-1.5.jar). Install a Java runtime to report it."
)
METEOR_SKIPPED_NOTE = "METEOR not computed: skipped on request (`meteor=False`)."
# Seconds METEOR's Java process may take before it is killed (a call took 20-30 s on two busy
# CPU cores, mostly the JVM and paraphrase-table start); the environment variable overrides.
METEOR_TIMEOUT_SECONDS = 600.0
METEOR_TIMEOUT_VARIABLE = "CAMEGRAD_RRG_METEOR_TIMEOUT"


def _meteor_timeout(timeout: float | None) -> float:
    """``timeout``, or the environment variable's, or the default; checked positive."""
    name, value = "meteor_timeout", timeout
    if timeout is None:
        name, value = METEOR_TIMEOUT_VARIABLE, os.environ.get(METEOR_TIMEOUT_VARIABLE)
        if value is None:
            return METEOR_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ValueError(
            f"`{name}` should be a positive number of seconds. Found `{name} = {value!r}`."
        )
    return seconds


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # The group: a wrapper script's children too.
    except ProcessLookupError:
        pass


def meteor_score(
    gts: dict[int, list[str]], res: dict[int, list[str]], *, timeout: float | None = None
) -> tuple[float | None, str | None]:
    """pycocoevalcap's corpus METEOR of ``res`` against ``gts``, or None and the reason.

    The protocol is pycocoevalcap's ``Meteor.compute_score``: one ``SCORE ||| refs ||| hyp``
    line per report (``|||`` removed from the hypothesis), answered by a statistics line, then
    ``EVAL ||| stats ...``, answered by one score per report and the corpus score. The Java
    process runs in its own process group, killed whole after ``timeout`` seconds.

    Args:
      gts: id to reference reports.
      res: id to a one-element list holding the generated report.
      timeout: seconds before the process is killed (default `METEOR_TIMEOUT_SECONDS`, or the
        ``CAMEGRAD_RRG_METEOR_TIMEOUT`` environment variable).

    Returns:
      ``(score, None)``, or ``(None, note)`` where the note says why there is no score.
    """
    timeout = _meteor_timeout(timeout)
    java = shutil.which("java")
    if java is None:
        return None, METEOR_MISSING_NOTE
    jar_dir = os.path.dirname(os.path.abspath(pycoco_meteor.__file__))
    command = [java, "-jar", "-Xmx2G", pycoco_meteor.METEOR_JAR]
    command += ["-", "-", "-stdio", "-l", "en", "-norm"]
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(
                command,
                cwd=jar_dir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
            )
        except OSError as error:
            return None, f"METEOR not computed: `{java}` could not be started ({error})."

        def on_timeout() -> None:
            timed_out.set()
            _kill_group(process)

        timer = threading.Timer(timeout, on_timeout)
        timer.start()
        failure = None
        try:

            def ask(line: str) -> str:
                process.stdin.write(f"{line}\n".encode())
                process.stdin.flush()
                return process.stdout.readline().decode().strip()

            stats = []
            for key in gts:
                hypothesis = res[key][0].replace("|||", "").replace("  ", " ")
                stats.append(ask(" ||| ".join(("SCORE", " ||| ".join(gts[key]), hypothesis))))
            scores = [float(ask(" ||| ".join(["EVAL", *stats])))]
            scores += [float(process.stdout.readline().strip()) for _ in range(len(gts))]
            score = scores[-1]
        except (OSError, ValueError) as error:
            failure = error
        finally:
            timer.cancel()
            for stream in (process.stdin, process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                process.wait()
        if failure is None:
            return score, None
        if timed_out.is_set():
            return None, (
                f"METEOR not computed: `{java}` gave no answer within {timeout:g} s and was "
                f"killed (set {METEOR_TIMEOUT_VARIABLE} to allow longer)."
            )
        errors.seek(0)
        tail = " ".join(errors.read().decode("utf-8", "replace").split())[-300:]
        return None, (
            f"METEOR not computed: `{java}` failed (exit status {process.returncode}: "
            f"{tail or type(failure).__name__})."
        )


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (0/0 → 0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _check_pair(generated: Sequence[str], references: Sequence[str]) -> None:
    for name, texts in (("generated", generated), ("references", references)):
        if isinstance(texts, str):
            raise TypeError(f"`{name}` should be a sequence of strings, not a single string.")
    if len(generated) != len(references):
        raise ValueError(
            "`generated` and `references` should have the same length. Found "
            f"{len(generated)} and {len(references)}."
        )
    if not len(generated):
        raise ValueError("`generated` and `references` should hold at least one report.")


def nlg_scores(
    generated: Sequence[str],
    references: Sequence[str],
    *,
    meteor: bool = True,
    meteor_timeout: float | None = None,
) -> dict[str, float | None | str]:
    """BLEU-1..4, METEOR and ROUGE-L of ``generated`` against ``references`` (one each).

    Args:
      generated: generated reports; empty strings are allowed and score 0.
      references: the reference report for each generated one.
      meteor: compute METEOR (it starts a Java process, about 15 s per call); when False,
        ``"METEOR"`` is ``None`` and ``"METEOR_note"`` says it was skipped.
      meteor_timeout: seconds the Java process may take (see `meteor_score`).

    Returns:
      ``{"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L"}`` as floats (BLEU is
      corpus-level, as pycocoevalcap computes it; METEOR is the Java program's corpus score;
      ROUGE-L is the mean over reports). When Java is missing, fails or times out,
      ``"METEOR"`` is ``None`` and a ``"METEOR_note"`` string says why.
    """
    _check_pair(generated, references)
    gts = {i: [" ".join(text.split())] for i, text in enumerate(references)}
    res = {i: [" ".join(text.split())] for i, text in enumerate(generated)}

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores: dict[str, float | None | str] = {f"BLEU_{n}": float(bleu[n - 1]) for n in range(1, 5)}
    if meteor:
        scores["METEOR"], note = meteor_score(gts, res, timeout=meteor_timeout)
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
    else:
        scores["METEOR"], note = None, METEOR_SKIPPED_NOTE
    rouge, _ = Rouge().compute_score(gts, res)
    scores["ROUGE_L"] = float(rouge)
    if note:
        scores["METEOR_note"] = note
    return scores


def _with_average(precision: float, recall: float, f1: float) -> dict[str, float]:
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "avg": (precision + recall + f1) / 3.0,  # the paper's "CE Avg."
    }


def clinical_efficacy_example_based(
    generated_labels: np.ndarray,
    reference_labels: np.ndarray,
    *,
    exclude_no_finding: bool = False,
) -> dict[str, float]:
    """CE, example-based ("instance-level"; PromptMRG, the paper's Section 4.2).

    Positive means label 1. For report ``i`` with TP/FP/FN counted over the 14 observations,

      P_i = TP / (TP + FP),   R_i = TP / (TP + FN),   F1_i = TP / (TP + (FP + FN) / 2),

    each 0 when its denominator is 0; precision, recall and F1 are means over reports.

    Args:
      generated_labels: ``(N, 14)`` labels of the generated reports, values in {0, 1, 2, 3}.
      reference_labels: ``(N, 14)`` labels of the reference reports.
      exclude_no_finding: count over the 13 findings only (``no_finding`` left out).

    Returns:
      ``{"precision", "recall", "f1", "avg"}``; ``avg`` is the mean of the other three.

    Example:
      >>> import numpy as np
      >>> normal = np.zeros((1, 14), int); normal[0, -1] = 1  # only `no_finding` positive
      >>> clinical_efficacy_example_based(normal, normal)["f1"]
      1.0
      >>> clinical_efficacy_example_based(normal, normal, exclude_no_finding=True)["f1"]
      0.0
    """
    generated, reference = _check_label_pair(generated_labels, reference_labels)
    if exclude_no_finding:
        generated, reference = generated[:, _FINDING_COLUMNS], reference[:, _FINDING_COLUMNS]
    pred, gold = generated == POSITIVE, reference == POSITIVE
    tp = (pred & gold).sum(1)
    fp = (pred & ~gold).sum(1)
    fn = (~pred & gold).sum(1)
    return _with_average(
        float(_safe_divide(tp, tp + fp).mean()),
        float(_safe_divide(tp, tp + fn).mean()),
        float(_safe_divide(tp, tp + 0.5 * (fp + fn)).mean()),
    )


def clinical_efficacy_label_macro(
    generated_labels: np.ndarray,
    reference_labels: np.ndarray,
    *,
    exclude_no_finding: bool = False,
) -> dict[str, float]:
    """CE, label-macro (the released CAME-Grad code).

    Positive means label 1 *or* 3 (uncertain). For observation ``l`` with TP/FP/FN counted over
    the N reports, P_l, R_l and F1_l as in `clinical_efficacy_example_based` with 0/0 → 0;
    precision, recall and F1 are means over the 14 observations.

    Args:
      generated_labels: ``(N, 14)`` labels of the generated reports, values in {0, 1, 2, 3}.
      reference_labels: ``(N, 14)`` labels of the reference reports.
      exclude_no_finding: average over the 13 findings only (``no_finding`` left out).

    Returns:
      ``{"precision", "recall", "f1", "avg"}``; ``avg`` is the mean of the other three.
    """
    generated, reference = _check_label_pair(generated_labels, reference_labels)
    if exclude_no_finding:
        generated, reference = generated[:, _FINDING_COLUMNS], reference[:, _FINDING_COLUMNS]
    pred = np.isin(generated, (POSITIVE, UNCERTAIN))
    gold = np.isin(reference, (POSITIVE, UNCERTAIN))
    tp = (pred & gold).sum(0)
    fp = (pred & ~gold).sum(0)
    fn = (~pred & gold).sum(0)
    return _with_average(
        float(_safe_divide(tp, tp + fp).mean()),
        float(_safe_divide(tp, tp + fn).mean()),
        float(_safe_divide(tp, tp + 0.5 * (fp + fn)).mean()),
    )


def _check_label_pair(generated: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, ...]:
    generated = check_labels(generated, "generated_labels")
    reference = check_labels(reference, "reference_labels")
    if generated.shape != reference.shape:
        raise ValueError(
            "`generated_labels` and `reference_labels` should have the same shape. Found "
            f"{generated.shape} and {reference.shape}."
        )
    if not len(generated):
        raise ValueError("The labels should hold at least one report.")
    return generated, reference


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts_group = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    group = np.cumsum(starts_group) - 1
    first = np.flatnonzero(starts_group)  # 0-based index where each tie group starts
    stop = np.append(first[1:], values.size)  # ... and where it ends (exclusive)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = ((first + 1 + stop) / 2.0)[group]  # mean of ranks first+1 .. stop
    return ranks


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve, by the Mann–Whitney U statistic.

    AUC = P(s⁺ > s⁻) + ½ P(s⁺ = s⁻) over positive/negative pairs, computed from average ranks
    (ties share their mean rank) as ``(Σ ranks of positives − n⁺(n⁺+1)/2) / (n⁺ n⁻)``.

    Args:
      scores: ``(n,)`` real scores, higher meaning more likely positive.
      targets: ``(n,)`` booleans (or 0/1), True for the positive class.

    Returns:
      The AUC, or NaN when ``targets`` holds a single class (AUC is undefined there).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).astype(bool).ravel()
    if scores.shape != targets.shape:
        raise ValueError(
            f"`scores` and `targets` should have the same size. Found {scores.size} and "
            f"{targets.size}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("`scores` should be finite.")
    n_pos = int(targets.sum())
    n_neg = targets.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(scores)[targets].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auxiliary_head_metrics(
    predictions: np.ndarray, gold_labels: np.ndarray, *, threshold: float | None = None
) -> dict[str, float]:
    """Metrics of the auxiliary classification head (the paper's Appendix F).

    Each observation is a binary problem, positive class (label 1) against the rest.

    * AUC from the positive-class score. Macro: mean over the observations whose gold labels
      hold both classes; an observation with a single class has no AUC and is *skipped* (the
      number kept is ``auc_macro_num_labels``). Micro: one AUC over all ``N × 14`` pairs.
    * Precision, recall and F1 of the predicted positives, 0/0 → 0 as in the label-macro CE.
      Macro: mean over all 14 observations; micro: TP/FP/FN pooled over them.

    Args:
      predictions: ``(N, 14, 4)`` class probabilities (softmax of the head; no logit
        adjustment), or ``(N, 14)`` positive-class scores in [0, 1].
      gold_labels: ``(N, 14)`` labels in {0, 1, 2, 3}.
      threshold: a label is predicted positive when its positive score is ``>= threshold``.
        Default: for probabilities, when the positive class is the arg-max of the 4 classes;
        for scores, ``0.5``.

    Returns:
      ``{"auc_macro", "auc_micro", "auc_macro_num_labels", "precision_macro", "recall_macro",
      "f1_macro", "precision_micro", "recall_micro", "f1_micro"}``; an AUC is NaN when no
      observation (macro) or the pooled labels (micro) hold both classes.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    gold = check_labels(gold_labels, "gold_labels") == POSITIVE
    expected = {2: gold.shape, 3: (*gold.shape, NUM_LABEL_CLASSES)}
    if expected.get(predictions.ndim) != predictions.shape:
        raise ValueError(
            f"`predictions` should have shape {expected[3]} (probabilities) or {expected[2]} "
            f"(positive scores). Found shape {predictions.shape}."
        )
    if not len(gold):
        raise ValueError("`gold_labels` should hold at least one report.")
    if predictions.ndim == 3:
        scores = predictions[..., POSITIVE]
        if threshold is None:
            predicted = predictions.argmax(-1) == POSITIVE
        else:
            predicted = scores >= threshold
    else:
        scores = predictions
        predicted = scores >= (0.5 if threshold is None else threshold)

    per_label_auc = np.array([roc_auc(scores[:, j], gold[:, j]) for j in range(NUM_OBSERVATIONS)])
    defined = per_label_auc[~np.isnan(per_label_auc)]
    tp = (predicted & gold).sum(0)
    fp = (predicted & ~gold).sum(0)
    fn = (~predicted & gold).sum(0)
    return {
        "auc_macro": float(defined.mean()) if defined.size else float("nan"),
        "auc_micro": roc_auc(scores, gold),
        "auc_macro_num_labels": float(defined.size),
        "precision_macro": float(_safe_divide(tp, tp + fp).mean()),
        "recall_macro": float(_safe_divide(tp, tp + fn).mean()),
        "f1_macro": float(_safe_divide(tp, tp + 0.5 * (fp + fn)).mean()),
        "precision_micro": float(_safe_divide(tp.sum(), tp.sum() + fp.sum())),
        "recall_micro": float(_safe_divide(tp.sum(), tp.sum() + fn.sum())),
        "f1_micro": float(_safe_divide(tp.sum(), tp.sum() + 0.5 * (fp.sum() + fn.sum()))),
    }


def evaluate_reports(
    generated: Sequence[str],
    references: Sequence[str],
    labeler: Labeler = label_reports,
    *,
    reference_labels: np.ndarray | None = None,
    meteor: bool = True,
) -> dict[str, float | None | str]:
    """NLG and both CE protocols in one flat dict.

    Args:
      generated: generated reports.
      references: reference reports, one per generated report.
      labeler: maps reports to ``(N, 14)`` labels in {0, 1, 2, 3}; the rule-based
        `label_reports` by default, or e.g. a `CheXbertLabeler`.
      reference_labels: ``(N, 14)`` labels to use for the references instead of labelling them
        (e.g. gold labels of synthetic data). By default the references go through ``labeler``
        like the generated reports, as the published protocols do.
      meteor: compute METEOR (see `nlg_scores`).

    Returns:
      ``BLEU_1``–``BLEU_4``, ``METEOR`` (``None`` without Java), ``ROUGE_L``;
      ``ce_example_{precision,recall,f1,avg}`` (`clinical_efficacy_example_based`);
      ``ce_label_macro_{precision,recall,f1,avg}`` (`clinical_efficacy_label_macro`); the
      same two without ``no_finding``, ``ce_example_no_nf_*`` and ``ce_label_macro_no_nf_*``;
      and ``METEOR_note`` only when METEOR was not computed.
    """
    scores = nlg_scores(generated, references, meteor=meteor)
    note = scores.pop("METEOR_note", None)
    generated_labels = labeler(list(generated))
    if reference_labels is None:
        reference_labels = labeler(list(references))
    for prefix, protocol in (
        ("ce_example", clinical_efficacy_example_based),
        ("ce_label_macro", clinical_efficacy_label_macro),
    ):
        for suffix, exclude in (("", False), ("_no_nf", True)):
            values = protocol(generated_labels, reference_labels, exclude_no_finding=exclude)
            for name, value in values.items():
                scores[f"{prefix}{suffix}_{name}"] = value
    if note is not None:
        scores["METEOR_note"] = note
    return scores
