"""The paper's experiments on the reference setup: methods compared on the same data and seeds.

:func:`run_comparison` trains every requested multi-task method (linear scalarization,
CAME-Grad, its three ablations, Setting B and the library's other methods) for every seed, on
one data set, and writes to its output folder:

* ``table.{md,csv,json}``: test metrics in the paper's format (CE precision / recall / F1 under
  both protocols, BLEU-1..4, METEOR, ROUGE-L, CE Avg.; and the auxiliary head's AUC), mean ± std
  over seeds;
* ``paired.{md,csv,json}``: every method against linear scalarization, seed by seed: the mean
  difference, its percentile-bootstrap interval (`camegrad_jax.rrg.stats.paired_bootstrap_ci`),
  the exact sign-flip p-value, and a plain sentence per metric
  (:mod:`camegrad_jax.rrg.compare_stats`);
* ``dynamics.{md,csv,json}``: gradient dynamics per method (share of steps whose task
  gradients conflict, cosine, magnitude-collapse ratio) and the trace of the update-noise
  covariance (see below);
* figures (PNG): ``cosine_hist.png``, ``collapse_ratio.png``, ``noise_trace.png``,
  ``training_curves.png``, and with a sweep ``sweep.png``;
* ``sweep.{md,csv,json}`` with ``sweep=True``: CAME-Grad's sensitivity to α, γ and c, one at a
  time around the default;
* ``summary.json``: every metric of every run, and all of the above.

**Update-noise trace** (the paper's Appendix B.2): see :mod:`camegrad_jax.rrg.compare_noise`.
The planning, the statistics, the tables and the figures are the modules
:mod:`~camegrad_jax.rrg.compare_plan`, :mod:`~camegrad_jax.rrg.compare_stats`,
:mod:`~camegrad_jax.rrg.compare_tables` and :mod:`~camegrad_jax.rrg.compare_figures`; this one
runs the plan and hands every run's :class:`~camegrad_jax.rrg.compare_plan.RunRecord` to them.

Runs live in ``out/runs/<name>/seed<k>/``; a finished run with the same configuration and data
is reused, and an interrupted one is resumed (interrupted at any point, see
:func:`camegrad_jax.rrg.train.train`), so a long comparison can be continued by running the same
command again. The output folder is locked while a comparison writes it.

Example:
  >>> from camegrad_jax.rrg.compare import run_comparison
  >>> from camegrad_jax.rrg.compare_plan import CompareConfig
  >>> summary = run_comparison(CompareConfig(out_dir="runs/compare"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from camegrad_jax.rrg import checkpoint as ckpt
from camegrad_jax.rrg.compare_figures import write_figures
from camegrad_jax.rrg.compare_noise import measure_noise, measure_noise_at_baseline
from camegrad_jax.rrg.compare_plan import (
    BASELINE,
    SUMMARY_FILE,
    SUMMARY_FORMAT,
    CompareConfig,
    RunRecord,
    RunSpec,
    plan_runs,
)
from camegrad_jax.rrg.compare_stats import (
    aggregate_table,
    comparison_notes,
    dynamics_table,
    paired_comparison,
    sweep_table,
)
from camegrad_jax.rrg.compare_tables import format_number, write_tables
from camegrad_jax.rrg.data import RRGDataset
from camegrad_jax.rrg.experiment import load_data
from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.metrics import evaluate_reports
from camegrad_jax.rrg.observations import POSITIVE
from camegrad_jax.rrg.results import (
    RESULTS_FILE,
    STEP_LOG_FILE,
    RunResults,
    json_ready,
    read_results,
)
from camegrad_jax.rrg.rundir import (
    RunLock,
    check_writable,
    data_fingerprint,
    fingerprint_changes,
    resolve_data_paths,
)
from camegrad_jax.rrg.train import config_differences, train

__all__ = ["constant_report_baseline", "run_comparison"]


def _train_or_reuse(spec: RunSpec, dataset: RRGDataset) -> tuple[RunResults, str]:
    """``(results, how)``: a finished run of the same configuration and data is read back, an
    interrupted one resumed, anything else trained from scratch."""
    if (spec.run_dir / RESULTS_FILE).exists():
        results = read_results(spec.run_dir)
        if results.status == "complete":
            saved = results.config
            recorded = results.data.get("fingerprint")
            changes = config_differences(saved, spec.config)
            if saved.meteor_test != spec.config.meteor_test:
                changes.append("meteor_test")  # A resume may change it; a reuse may not.
            if recorded is not None:
                changes += fingerprint_changes(recorded, data_fingerprint(spec.config, dataset))
            if changes:
                raise ValueError(
                    f"{spec.run_dir} holds a finished run of another configuration or data "
                    f"({'; '.join(changes)}); choose another output folder."
                )
            return results, "reused"
    if ckpt.has_checkpoint(spec.run_dir, ckpt.LATEST):
        return train(spec.config, resume=True, progress=False), "resumed"
    return train(spec.config, progress=False, dataset=dataset), "trained"


def constant_report_baseline(dataset: RRGDataset) -> dict[str, Any]:
    """Test metrics of writing one and the same report for every test study: the training
    report whose labels score the highest example-based CE F1 against the training reports.

    This is the best an image-blind decoder can do by the paper's CE protocol (chosen on train,
    scored on test), so a model "learns" the report task only above it.
    """
    clean = dataset.tokenizer.clean
    train_reports = [clean(r) for r in dataset.splits["train"].reports]
    candidates = sorted(set(train_reports))
    candidate_positive = label_reports(candidates) == POSITIVE  # (C, 14)
    gold = label_reports(train_reports) == POSITIVE  # (N, 14)
    tp = np.einsum("cl,nl->cn", candidate_positive.astype(np.int64), gold.astype(np.int64))
    fp = candidate_positive.sum(1)[:, None] - tp
    fn = gold.sum(1)[None, :] - tp
    denominator = tp + 0.5 * (fp + fn)
    f1 = np.divide(tp, denominator, out=np.zeros(tp.shape), where=denominator > 0).mean(1)
    report = candidates[int(np.argmax(f1))]
    references = [clean(r) for r in dataset.splits["test"].reports]
    metrics = evaluate_reports([report] * len(references), references, meteor=False)
    return {"report": report, "train_ce_example_f1": float(f1.max()), "metrics": metrics}


def _dynamics_of_run(spec: RunSpec) -> dict[str, Any]:
    """Gradient statistics of a run from its per-step log."""
    log = np.load(spec.run_dir / STEP_LOG_FILE)
    out: dict[str, Any] = {"num_steps": int(len(log["step"]))}
    if "cosine_similarity" not in log.files:
        return out
    cosine = log["cosine_similarity"].astype(np.float64)
    collapse = log["magnitude_collapse_ratio"].astype(np.float64)
    last_epoch = log["epoch"] == log["epoch"].max()
    joint, update = log["joint_norm"].astype(np.float64), log["update_norm"].astype(np.float64)
    usable = joint > 0
    out.update(
        conflict_share=float(np.mean(log["conflict"])),
        cosine_mean=float(cosine.mean()),
        cosine_median=float(np.median(cosine)),
        collapse_ratio_mean=float(collapse.mean()),
        collapse_ratio_last_epoch=float(collapse[last_epoch].mean()),
        update_to_joint_norm_mean=float(np.mean(update[usable] / joint[usable])),
    )
    return out


def _run_record(spec: RunSpec, results: RunResults, how: str) -> RunRecord:
    config = spec.config
    return RunRecord(
        name=spec.name,
        method=spec.method,
        seed=spec.seed,
        hyper={"c": config.c, "gamma": config.gamma, "alpha": config.alpha},
        run_dir=str(spec.run_dir),
        how=how,
        test=results.test,
        selection=results.selection.to_dict(),
        val_ce_example_f1=[e.val["ce_example_f1"] for e in results.epochs if e.val is not None],
        train_losses=[[e.train_loss_lm, e.train_loss_cls] for e in results.epochs],
        dynamics=_dynamics_of_run(spec),
        wall_seconds=results.timing.wall_seconds,
        steps=results.optimizer["total_steps"],
    )


def run_comparison(config: CompareConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train every run of ``config`` (or reuse it), measure, and write tables, figures and
    ``summary.json`` to ``config.out_dir``.

    Returns:
      The summary (also ``out_dir/summary.json``): ``config``; ``runs`` (one record per run:
      ``name``, ``method``, ``seed``, ``hyper``, ``test`` with every test metric,
      ``selection``, ``val_ce_example_f1`` per epoch, ``train_losses`` per epoch,
      ``dynamics``, ``noise``, ``wall_seconds``); ``table``; ``paired``; ``dynamics``;
      ``sweep`` (when run); ``files``; ``notes``; ``timing``.
    """
    out = check_writable(config.out_dir, "output folder")
    config = dataclasses.replace(config, base=resolve_data_paths(config.base))
    with RunLock(out):
        return _run_comparison_locked(config, out, progress)


def _run_comparison_locked(config: CompareConfig, out: Path, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    specs = plan_runs(config)
    dataset = load_data(config.base)  # Every run trains on the same data.
    records: list[RunRecord] = []
    bar = tqdm(specs, desc="compare", unit="run", disable=not progress, dynamic_ncols=True)
    for spec in bar:
        bar.set_postfix_str(f"{spec.name} seed {spec.seed}")
        results, how = _train_or_reuse(spec, dataset)
        record = _run_record(spec, results, how)
        if spec.name in config.noise_methods:
            noise = measure_noise(spec, config.noise_batches, dataset)
            record = dataclasses.replace(record, noise=noise)
        records.append(record)
        if progress:
            test = record.test
            tqdm.write(
                f"{spec.name} seed {spec.seed} ({how}, {record.wall_seconds:.0f} s): "
                f"CE F1 {test['ce_example_f1']:.3f} (example), "
                f"{test['ce_label_macro_f1']:.3f} (label-macro), "
                f"aux AUC {format_number(test.get('aux_auc_macro'))}"
            )
    bar.close()

    noise_at_baseline: dict[str, Any] = {}
    if BASELINE in config.methods and config.noise_methods:
        for spec in specs:
            if spec.name == BASELINE:
                noise_at_baseline[str(spec.seed)] = measure_noise_at_baseline(
                    spec, config.noise_methods, config.noise_batches, dataset
                )

    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "config": config.to_dict(),
        "runs": [record.to_dict() for record in records],
        "table": aggregate_table(records, config.methods),
        "paired": paired_comparison(
            records,
            config.methods,
            confidence=config.confidence,
            resamples=config.bootstrap_resamples,
        ),
        "dynamics": dynamics_table(records, config.methods, noise_at_baseline),
        "noise_at_baseline_parameters": noise_at_baseline,
        "constant_report": constant_report_baseline(dataset),
        "notes": comparison_notes(config, records),
    }
    if config.sweep:
        summary["sweep"] = sweep_table(records, config)
    summary = json_ready(summary)
    files = write_tables(summary, out) + write_figures(summary, out, specs)
    summary["files"] = files
    summary["timing"] = {"wall_seconds": time.perf_counter() - started}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
