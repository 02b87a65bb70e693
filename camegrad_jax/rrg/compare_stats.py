"""The statistics of a comparison: tables over seeds, the paired test against the baseline, the
gradient dynamics and the sweep, from the runs' :class:`~camegrad_jax.rrg.compare_plan.RunRecord`.

Every method is compared with linear scalarization seed by seed: the mean difference, its
percentile-bootstrap interval (`camegrad_jax.rrg.stats.paired_bootstrap_ci`), the exact
sign-flip p-value, and a verdict that refuses to conclude from fewer seeds than the exact test
needs (:func:`min_seeds_for_significance`).

Example:
  >>> from camegrad_jax.rrg.compare_stats import min_seeds_for_significance
  >>> min_seeds_for_significance(0.99)
  8
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from camegrad_jax.rrg.compare_plan import (
    BASELINE,
    CAMEGRAD,
    DEFAULT_SWEEP,
    PAIRED_METRICS,
    TABLE_METRICS,
    CompareConfig,
    RunRecord,
    sweep_name,
)
from camegrad_jax.rrg.stats import paired_bootstrap_ci, sign_flip_p_value

__all__ = [
    "aggregate_table",
    "comparison_notes",
    "dynamics_table",
    "min_seeds_for_significance",
    "paired_comparison",
    "sweep_table",
]


def _mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else None
    return {"mean": float(np.mean(kept)), "std": std, "n": len(kept), "values": list(values)}


def _by_name(records: Sequence[RunRecord], name: str) -> list[RunRecord]:
    return sorted((r for r in records if r.name == name), key=lambda r: r.seed)


def aggregate_table(
    records: Sequence[RunRecord], names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``{name: {metric: {"mean", "std", "n", "values"}}}`` over seeds, for `TABLE_METRICS`
    (std with ddof 1; None with one seed)."""
    table = {}
    for name in names:
        runs = _by_name(records, name)
        if runs:
            table[name] = {m: _mean_std([r.test.get(m) for r in runs]) for m in TABLE_METRICS}
            table[name]["seeds"] = [r.seed for r in runs]
    return table


def min_seeds_for_significance(confidence: float) -> int:
    """Fewest paired seeds whose exact two-sided sign-flip test can reach ``p <= 1 - confidence``.

    With n pairs the smallest attainable p-value is 2^(1 − n) (all differences of one sign), so
    at 95 % confidence at least 6 seeds are needed (p >= 0.0625 with 5 seeds, 0.03125 with 6).
    Below that, no outcome of the comparison can be significant.

    Examples:
      >>> min_seeds_for_significance(0.95)
      6
    """
    n = 1
    while 2.0 ** (1 - n) > 1.0 - confidence:
        n += 1
    return n


def _verdict(method: str, metric: str, diffs: Sequence[float], ci: Any, p: float, conf: float):
    n = len(diffs)
    level = f"{round(100 * conf)} %"
    shown = f"{ci.mean:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}]"
    head = f"{method} − {BASELINE} on {metric}: {shown} ({level} bootstrap CI over {n} seeds)"
    if n < 2:
        return "insufficient", f"{head}: one seed, no interval; nothing can be concluded."
    needed = min_seeds_for_significance(conf)
    if n < needed:
        # A bootstrap interval over so few seeds can exclude 0 by chance; the exact test
        # cannot reach significance whatever the differences, so no verdict is given.
        return "insufficient", (
            f"{head}: {n} seeds cannot establish a difference (the exact sign-flip test cannot "
            f"go below p = {2.0 ** (1 - n):.2f}; {needed} seeds are the minimum for "
            f"p <= {1.0 - conf:.2f}), so the interval only describes these seeds."
        )
    if ci.low > 0:
        verdict, text = "improves", f"{head}: the improvement holds (the CI excludes 0)"
    elif ci.high < 0:
        verdict, text = "worse", f"{head}: worse than {BASELINE} (the CI excludes 0 below)"
    else:
        verdict, text = "no_difference", f"{head}: no significant difference (the CI includes 0)"
    if verdict != "no_difference" and p > 1.0 - conf:
        text += f", but the exact sign-flip test gives p = {p:.2f}, so this is weak evidence"
    return verdict, text + "."


def paired_comparison(
    records: Sequence[RunRecord],
    names: Sequence[str],
    *,
    baseline: str = BASELINE,
    confidence: float = 0.95,
    resamples: int = 10_000,
) -> dict[str, dict[str, Any]]:
    """Every name against ``baseline``, seed by seed, on `PAIRED_METRICS`.

    Returns:
      ``{name: {metric: {"differences", "seeds", "mean", "ci_low", "ci_high", "p_sign_flip",
      "verdict", "sentence"}}}``; empty without the baseline. ``verdict`` is ``"improves"``
      (the CI lies above 0), ``"worse"`` (below 0), ``"no_difference"``, or ``"insufficient"``
      when there are fewer seeds than `min_seeds_for_significance` (the exact sign-flip test
      could not be significant whatever the outcome).
    """
    base = {r.seed: r for r in _by_name(records, baseline)}
    out: dict[str, dict[str, Any]] = {}
    if not base:
        return out
    for name in names:
        if name == baseline:
            continue
        runs = [r for r in _by_name(records, name) if r.seed in base]
        if not runs:
            continue
        out[name] = {}
        for metric in PAIRED_METRICS:
            pairs = [(r.seed, r.test.get(metric), base[r.seed].test.get(metric)) for r in runs]
            pairs = [(s, a, b) for s, a, b in pairs if a is not None and b is not None]
            if not pairs:
                continue
            seeds = [s for s, _, _ in pairs]
            diffs = [a - b for _, a, b in pairs]
            ci = paired_bootstrap_ci(diffs, confidence, resamples, seed=0)
            p = sign_flip_p_value(diffs)
            verdict, sentence = _verdict(name, metric, diffs, ci, p, confidence)
            out[name][metric] = {
                "differences": diffs,
                "seeds": seeds,
                "mean": ci.mean,
                "ci_low": ci.low,
                "ci_high": ci.high,
                "p_sign_flip": p,
                "verdict": verdict,
                "sentence": sentence,
            }
    return out


def dynamics_table(
    records: Sequence[RunRecord],
    names: Sequence[str],
    noise_at_baseline: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per name, over seeds: conflict share, cosine, collapse ratio, update/joint norm, and
    the noise traces (own parameters; at the baseline's parameters when measured)."""
    fields = (
        "conflict_share",
        "cosine_mean",
        "collapse_ratio_mean",
        "collapse_ratio_last_epoch",
        "update_to_joint_norm_mean",
    )
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = _by_name(records, name)
        if not runs:
            continue
        row = {f: _mean_std([r.dynamics.get(f) for r in runs]) for f in fields}
        for scope in ("shared", "all"):
            own = [r.noise[f"trace_{scope}"] for r in runs if r.noise is not None]
            if own:
                row[f"noise_trace_{scope}"] = _mean_std(own)
            at_base = [
                by_method[name][f"trace_{scope}"]
                for by_method in (noise_at_baseline or {}).values()
                if name in by_method
            ]
            if at_base:
                row[f"noise_trace_{scope}_at_baseline"] = _mean_std(at_base)
        table[name] = row
    return table


def sweep_table(records: Sequence[RunRecord], config: CompareConfig) -> dict[str, Any]:
    """``{param: [{"value", "name", metric: {"mean", "std", ...}}]}`` of the sweep (the other
    two hyper-parameters at ``config.base``'s values), for the CE, NLG and aux metrics."""
    out: dict[str, Any] = {}
    for param, values in config.sweep_grid.items():
        rows = []
        for value in values:
            name = CAMEGRAD if value == getattr(config.base, param) else sweep_name(param, value)
            runs = _by_name(records, name)
            row: dict[str, Any] = {"value": value, "name": name}
            row.update({m: _mean_std([r.test.get(m) for r in runs]) for m in TABLE_METRICS})
            rows.append(row)
        out[param] = rows
    out["fixed"] = {p: getattr(config.base, p) for p in DEFAULT_SWEEP}
    return out


# How the notes name each `TrainConfig.selection_metric`.
_SELECTION_WORDS = {
    "ce_example_f1": "val example-based CE F1",
    "ce_example_no_nf_f1": "val example-based CE F1 without No Finding",
    "BLEU_4": "val BLEU-4",
}


def comparison_notes(config: CompareConfig, records: Sequence[RunRecord]) -> list[str]:
    selected_by = _SELECTION_WORDS[config.base.selection_metric]
    notes = [
        f"Test metrics of each run's best checkpoint (by {selected_by}); CE labels both "
        "generated and reference reports with the rule-based labeler.",
        "Mean ± std over seeds (std with ddof 1); the data set is the same for every run.",
        "Paired comparison: per-seed differences against linear scalarization, percentile "
        f"bootstrap ({config.bootstrap_resamples} resamples) of their mean; with few seeds the "
        "interval cannot leave the range of the differences, and the exact sign-flip p-value "
        "cannot fall below 2^(1-n).",
        "Gradient statistics (cosine, conflict, collapse ratio) are on the shared parameters "
        "(the visual encoder), for methods that form the Gram matrix.",
    ]
    if config.noise_methods:
        notes.append(
            f"Noise trace: trace of the sample covariance (ddof 1) of the multi-task output "
            f"(before AdamW) over {config.noise_batches} training minibatches of "
            f"{config.base.batch_size} at fixed final parameters (capped at one epoch), "
            "dropout on; 'shared' = visual encoder leaves, 'all' = every parameter."
        )
    if any(r.test.get("METEOR") is None for r in records):
        notes.append("METEOR not computed for some or all runs (meteor_test off or no Java).")
    return notes
