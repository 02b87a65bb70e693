"""The paper's experiments on the reference setup: methods compared on the same data and seeds.

:func:`run_comparison` trains every requested multi-task method (linear scalarization,
CAME-Grad, its three ablations, Setting B and the library's other methods) for every seed, on
one data set, and writes to its output folder:

* ``table.{md,csv,json}``: test metrics in the paper's format (CE precision / recall / F1 under
  both protocols, BLEU-1..4, METEOR, ROUGE-L, CE Avg.; and the auxiliary head's AUC), mean ± std
  over seeds;
* ``paired.{md,csv,json}``: every method against linear scalarization, seed by seed: the mean
  difference, its percentile-bootstrap interval (`camegrad_jax.rrg.stats.paired_bootstrap_ci`),
  the exact sign-flip p-value, and a plain sentence per metric;
* ``dynamics.{md,csv,json}``: gradient dynamics per method (share of steps whose task
  gradients conflict, cosine, magnitude-collapse ratio) and the trace of the update-noise
  covariance (see below);
* figures (PNG): ``cosine_hist.png``, ``collapse_ratio.png``, ``noise_trace.png``,
  ``training_curves.png``, and with a sweep ``sweep.png``;
* ``sweep.{md,csv,json}`` with ``sweep=True``: CAME-Grad's sensitivity to α, γ and c, one at a
  time around the default;
* ``summary.json``: every metric of every run, and all of the above.

**Update-noise trace** (the paper's Appendix B.2). At the end of training, with the parameters
fixed, the multi-task method's output (the update handed to AdamW) is sampled on
``noise_batches`` training minibatches (one fixed shuffled set, the same for every method and
seed; dropout and logit adjustment on, as in a training step; the method's final state, with
PRNG keys folded per minibatch), and the trace of the sample covariance (ddof 1) of these
vectors is reported over the shared leaves (the visual encoder, where the methods act) and
over all leaves. With linear scalarization among the methods, the same is also measured for
every noise method *at the linear run's final parameters* (fresh method state), which isolates
the method's own effect from where its training ended.

Runs live in ``out/runs/<name>/seed<k>/``; a finished run with the same configuration and data
is reused, and an interrupted one is resumed (interrupted at any point, see
:func:`camegrad_jax.rrg.train.train`), so a long comparison can be continued by running the same
command again. The output folder is locked while a comparison writes it.

Example:
  >>> from camegrad_jax.rrg.compare import CompareConfig, run_comparison
  >>> summary = run_comparison(CompareConfig(out_dir="runs/compare"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import camegrad_jax
from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.optim import MULTITASK_METHODS, available_methods
from camegrad_jax.rrg.stats import covariance_trace, paired_bootstrap_ci, sign_flip_p_value

__all__ = [
    "BASELINE",
    "CAMEGRAD_FAMILY",
    "DEFAULT_SWEEP",
    "PAIRED_METRICS",
    "QUICK_FIELDS",
    "SUMMARY_FILE",
    "TABLE_METRICS",
    "CompareConfig",
    "RunSpec",
    "aggregate_table",
    "dynamics_table",
    "format_summary",
    "markdown_tables",
    "min_seeds_for_significance",
    "constant_report_baseline",
    "paired_comparison",
    "plan_runs",
    "run_comparison",
    "sweep_table",
    "write_figures",
]

BASELINE = "linear"
CAMEGRAD = "camegrad"
# CAME-Grad and its registered ablations and variants.
CAMEGRAD_FAMILY = (CAMEGRAD,) + tuple(
    info.name for info in camegrad_jax.registered_methods() if info.variant_of == CAMEGRAD
)
SUMMARY_FILE = "summary.json"
_SUMMARY_FORMAT = "camegrad-rrg-compare/1"

# The test metrics of the tables: (key in results.json's "test", column label).
_CE = {"precision": "Prec.", "recall": "Rec.", "f1": "F1", "avg": "CE Avg."}
_NLG = {
    "BLEU_1": "B-1",
    "BLEU_2": "B-2",
    "BLEU_3": "B-3",
    "BLEU_4": "B-4",
    "METEOR": "MTR",
    "ROUGE_L": "R-L",
}
_AUX = {"aux_auc_macro": "AUC macro", "aux_auc_micro": "AUC micro", "aux_f1_macro": "F1 macro"}
TABLE_METRICS: tuple[str, ...] = (
    *(f"ce_example_{name}" for name in _CE),
    *(f"ce_label_macro_{name}" for name in _CE),
    # CE F1 over the 13 findings (no `no_finding`): a "normal" report cannot score there.
    "ce_example_no_nf_f1",
    "ce_label_macro_no_nf_f1",
    *_NLG,
    *_AUX,
)
# Compared with the baseline seed by seed (higher is better for every one of them).
PAIRED_METRICS = TABLE_METRICS
_PROTOCOLS = {
    "ce_example": "example-based CE (positive only, per report; the paper's Section 4.2)",
    "ce_label_macro": "label-macro CE (positive or uncertain, per label; the released code)",
}

# α, γ, c values of the sensitivity sweep, inside the paper's Tables D.1/E.1 ranges.
DEFAULT_SWEEP: dict[str, tuple[float, ...]] = {
    "alpha": (0.1, 0.2, 0.5, 0.9),
    "gamma": (1.0, 1.5, 2.0),
    "c": (0.1, 0.3, 0.5),
}

# `--quick`: linear vs CAME-Grad on a smaller data set and model that still learns (both tasks
# above chance) and shows the dynamics; measured at about 6 minutes on two CPU cores.
QUICK_FIELDS: dict[str, Any] = {
    "synthetic_train_size": 600,
    "synthetic_val_size": 60,
    "synthetic_test_size": 120,
    "batch_size": 16,
    "epochs": 9,
    "meteor_test": False,
}
QUICK_METHODS = (BASELINE, CAMEGRAD)
QUICK_SEEDS = (0, 1)
QUICK_NOISE_BATCHES = 16


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """A comparison.

    Attributes:
      out_dir: output folder (runs, tables, figures, ``summary.json``).
      base: the training configuration every run starts from (``save_dir``, ``optimizer`` and
        ``seed`` are set per run).
      methods: multi-task methods (names of ``MULTITASK_METHODS``); default every method this
        library version exports.
      seeds: training seeds (the data set is the same for all: ``base.synthetic_seed``).
      noise_methods: methods whose update-noise trace is measured; default linear and the
        CAME-Grad family among ``methods``.
      noise_batches: minibatches sampled for each noise trace (at most one epoch's worth).
      sweep: also run CAME-Grad's sensitivity sweep.
      sweep_grid: values of ``alpha``, ``gamma`` and ``c`` in the sweep; each is varied alone,
        the others at ``base``'s values.
      confidence: coverage of the bootstrap intervals.
      bootstrap_resamples: resamples of each bootstrap interval.
    """

    out_dir: str = "runs/compare"
    base: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    methods: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    noise_methods: tuple[str, ...] | None = None
    noise_batches: int = 32
    sweep: bool = False
    sweep_grid: Mapping[str, tuple[float, ...]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_SWEEP)
    )
    confidence: float = 0.95
    bootstrap_resamples: int = 10_000

    def __post_init__(self) -> None:
        methods = available_methods() if self.methods is None else tuple(self.methods)
        unknown = [m for m in methods if m not in MULTITASK_METHODS]
        if unknown or not methods:
            raise ValueError(
                f"`methods` should be names of {tuple(MULTITASK_METHODS)}. Found {methods}."
            )
        object.__setattr__(self, "methods", tuple(dict.fromkeys(methods)))
        seeds = tuple(self.seeds)
        if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
            raise ValueError(f"`seeds` should be non-negative ints. Found {seeds}.")
        object.__setattr__(self, "seeds", tuple(dict.fromkeys(seeds)))
        if self.noise_methods is None:
            noise = tuple(m for m in (BASELINE, *CAMEGRAD_FAMILY) if m in self.methods)
        else:
            noise = tuple(self.noise_methods)
            outside = [m for m in noise if m not in self.methods]
            if outside:
                raise ValueError(f"`noise_methods` {outside} are not among `methods`.")
            steps = [m for m in noise if MULTITASK_METHODS[m].step]
            if steps:
                raise ValueError(
                    f"`noise_methods` {steps} are training steps: they have no single update "
                    "to sample."
                )
        object.__setattr__(self, "noise_methods", noise)
        if noise and self.noise_batches < 2:
            raise ValueError(f"`noise_batches` should be >= 2. Found {self.noise_batches}.")
        grid = {name: tuple(float(v) for v in values) for name, values in self.sweep_grid.items()}
        if set(grid) - set(DEFAULT_SWEEP):
            raise ValueError(f"`sweep_grid` keys should be among {tuple(DEFAULT_SWEEP)}.")
        object.__setattr__(self, "sweep_grid", grid)
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"`confidence` should lie in (0, 1). Found {self.confidence}.")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["base"] = self.base.to_dict()
        return out


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of the comparison.

    Attributes:
      name: ``method`` for the method comparison, ``camegrad_<param><value>`` for the sweep.
      method: the multi-task method.
      seed: the training seed.
      config: the run's training configuration (its ``save_dir`` is the run directory).
    """

    name: str
    method: str
    seed: int
    config: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.save_dir)


def _format_value(value: float) -> str:
    return f"{value:g}"


def _sweep_name(param: str, value: float) -> str:
    return f"{CAMEGRAD}_{param}{_format_value(value)}"


def plan_runs(config: CompareConfig) -> list[RunSpec]:
    """The runs of ``config``, methods first then the sweep; a sweep point equal to the
    default CAME-Grad configuration is the ``camegrad`` run itself (trained once)."""
    out = Path(config.out_dir) / "runs"
    base = config.base
    specs: dict[str, RunSpec] = {}

    def add(name: str, method: str, seed: int, **changes: Any) -> None:
        key = f"{name}/seed{seed}"
        if key not in specs:
            run = base.replace(optimizer=method, seed=seed, save_dir=str(out / key), **changes)
            specs[key] = RunSpec(name, method, seed, run)

    for method, seed in itertools.product(config.methods, config.seeds):
        add(method, method, seed)
    if config.sweep:
        for param, values in config.sweep_grid.items():
            for value, seed in itertools.product(values, config.seeds):
                if value == getattr(base, param):
                    add(CAMEGRAD, CAMEGRAD, seed)
                else:
                    add(_sweep_name(param, value), CAMEGRAD, seed, **{param: value})
    return list(specs.values())


# ----------------------------------------------------------------------------------------------
# Running.


def _train_or_reuse(spec: RunSpec, dataset: Any) -> tuple[dict[str, Any], str]:
    """``(results, how)``: a finished run of the same configuration and data is read back, an
    interrupted one resumed, anything else trained from scratch."""
    from camegrad_jax.rrg import checkpoint as ckpt
    from camegrad_jax.rrg.rundir import data_fingerprint, fingerprint_changes
    from camegrad_jax.rrg.train import RESULTS_FILE, config_differences, train

    results_path = spec.run_dir / RESULTS_FILE
    if results_path.exists():
        results = json.loads(results_path.read_text(encoding="utf-8"))
        if results.get("status") == "complete":
            saved = TrainConfig.from_dict(results["config"])
            recorded = results["data"].get("fingerprint")
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


def _noise_batches(dataset: Any, batch_size: int, count: int) -> list[dict[str, np.ndarray]]:
    batches = dataset.iterate_batches(
        "train", batch_size, seed=_NOISE_SEED, epoch=0, shuffle=True, drop_last=True
    )
    return list(itertools.islice(batches, count))


_NOISE_SEED = 20_260_101  # Minibatch order and dropout keys of the noise samples.


def _shared_columns(setup: Any) -> np.ndarray:
    """Which entries of a flattened update (``update_samples`` order) are shared leaves."""
    import jax

    leaves = jax.tree.leaves(setup.params)
    mask = jax.tree.leaves(setup.shared_mask)
    return np.concatenate(
        [np.full(leaf.size, bool(shared)) for leaf, shared in zip(leaves, mask, strict=True)]
    )


def _noise_measurement(setup, params, rest, state, batches) -> dict[str, Any]:
    from camegrad_jax.rrg.experiment import update_samples

    samples = update_samples(
        setup, params, batches, rest=rest, multitask_state=state, seed=_NOISE_SEED
    )
    shared = _shared_columns(setup)
    mean = samples.mean(axis=0)
    return {
        "num_minibatches": int(samples.shape[0]),
        "batch_size": int(batches[0]["labels"].shape[0]),
        "num_params": int(samples.shape[1]),
        "num_shared_params": int(shared.sum()),
        "trace_shared": covariance_trace(samples[:, shared]),
        "trace_all": covariance_trace(samples),
        "mean_update_sq_norm_shared": float(np.sum(mean[shared].astype(np.float64) ** 2)),
        "mean_update_sq_norm_all": float(np.sum(mean.astype(np.float64) ** 2)),
    }


def _measure_noise(spec: RunSpec, count: int, dataset: Any) -> dict[str, Any]:
    """Noise trace of the run's method at its own final parameters and state."""
    from camegrad_jax.rrg import checkpoint as ckpt
    from camegrad_jax.rrg.diagnostics import find_multitask_state
    from camegrad_jax.rrg.train import restore_run

    path = spec.run_dir / "noise.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    restored = restore_run(spec.run_dir, ckpt.LATEST, dataset=dataset)
    setup = restored.setup
    batches = _noise_batches(dataset, spec.config.batch_size, count)
    state = find_multitask_state(restored.opt_state)
    noise = _noise_measurement(setup, restored.params, restored.rest, state, batches)
    noise["parameters"] = "own final"
    path.write_text(json.dumps(noise, indent=1), encoding="utf-8")
    return noise


def _measure_noise_at_baseline(
    baseline: RunSpec, methods: Sequence[str], count: int, dataset: Any
) -> dict[str, dict[str, Any]]:
    """Noise trace of each method at the baseline run's final parameters (fresh states)."""
    from camegrad_jax.rrg import checkpoint as ckpt
    from camegrad_jax.rrg.experiment import build_setup
    from camegrad_jax.rrg.train import restore_run

    path = baseline.run_dir / "noise_by_method.json"
    done = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    missing = [m for m in methods if m not in done]
    if missing:
        restored = restore_run(baseline.run_dir, ckpt.LATEST, dataset=dataset)
        batches = _noise_batches(dataset, baseline.config.batch_size, count)
        for method in missing:
            if method == baseline.method:  # Its own measurement: the same parameters.
                done[method] = _measure_noise(baseline, count, dataset)
                continue
            setup = build_setup(restored.setup.config.replace(optimizer=method), dataset=dataset)
            noise = _noise_measurement(setup, restored.params, restored.rest, None, batches)
            noise["parameters"] = f"final parameters of {baseline.name} seed {baseline.seed}"
            done[method] = noise
        path.write_text(json.dumps(done, indent=1), encoding="utf-8")
    return {m: done[m] for m in methods}


def constant_report_baseline(dataset: Any) -> dict[str, Any]:
    """Test metrics of writing one and the same report for every test study: the training
    report whose labels score the highest example-based CE F1 against the training reports.

    This is the best an image-blind decoder can do by the paper's CE protocol (chosen on train,
    scored on test), so a model "learns" the report task only above it.
    """
    from camegrad_jax.rrg.labeler import label_reports
    from camegrad_jax.rrg.metrics import evaluate_reports
    from camegrad_jax.rrg.observations import POSITIVE

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
    from camegrad_jax.rrg.train import STEP_LOG_FILE

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


def _run_record(spec: RunSpec, results: dict[str, Any], how: str) -> dict[str, Any]:
    config = spec.config
    return {
        "name": spec.name,
        "method": spec.method,
        "seed": spec.seed,
        "hyper": {"c": config.c, "gamma": config.gamma, "alpha": config.alpha},
        "run_dir": str(spec.run_dir),
        "how": how,
        "test": results["test"],
        "selection": results["selection"],
        "val_ce_example_f1": [e["val"]["ce_example_f1"] for e in results["epochs"] if "val" in e],
        "train_losses": [[e["train_loss_lm"], e["train_loss_cls"]] for e in results["epochs"]],
        "dynamics": _dynamics_of_run(spec),
        "wall_seconds": results["timing"]["wall_seconds"],
        "steps": results["optimizer"]["total_steps"],
    }


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
    from camegrad_jax.rrg.rundir import RunLock, check_writable, resolve_data_paths

    out = check_writable(config.out_dir, "output folder")
    config = dataclasses.replace(config, base=resolve_data_paths(config.base))
    with RunLock(out):
        return _run_comparison_locked(config, out, progress)


def _run_comparison_locked(config: CompareConfig, out: Path, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from camegrad_jax.rrg.experiment import load_data
    from camegrad_jax.rrg.train import json_ready

    started = time.perf_counter()
    specs = plan_runs(config)
    dataset = load_data(config.base)  # Every run trains on the same data.
    records: list[dict[str, Any]] = []
    bar = tqdm(specs, desc="compare", unit="run", disable=not progress, dynamic_ncols=True)
    for spec in bar:
        bar.set_postfix_str(f"{spec.name} seed {spec.seed}")
        results, how = _train_or_reuse(spec, dataset)
        record = _run_record(spec, results, how)
        if spec.name in config.noise_methods:
            record["noise"] = _measure_noise(spec, config.noise_batches, dataset)
        records.append(record)
        if progress:
            test = record["test"]
            tqdm.write(
                f"{spec.name} seed {spec.seed} ({how}, {record['wall_seconds']:.0f} s): "
                f"CE F1 {test['ce_example_f1']:.3f} (example), "
                f"{test['ce_label_macro_f1']:.3f} (label-macro), "
                f"aux AUC {_fmt(test['aux_auc_macro'])}"
            )
    bar.close()

    noise_at_baseline: dict[str, Any] = {}
    if BASELINE in config.methods and config.noise_methods:
        for spec in specs:
            if spec.name == BASELINE:
                noise_at_baseline[str(spec.seed)] = _measure_noise_at_baseline(
                    spec, config.noise_methods, config.noise_batches, dataset
                )

    summary: dict[str, Any] = {
        "format": _SUMMARY_FORMAT,
        "config": config.to_dict(),
        "runs": records,
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
        "notes": _notes(config, records),
    }
    if config.sweep:
        summary["sweep"] = sweep_table(records, config)
    summary = json_ready(summary)
    files = _write_outputs(summary, config, specs)
    summary["files"] = files
    summary["timing"] = {"wall_seconds": time.perf_counter() - started}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


# ----------------------------------------------------------------------------------------------
# Aggregation.


def _mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else None
    return {"mean": float(np.mean(kept)), "std": std, "n": len(kept), "values": list(values)}


def _by_name(records: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return sorted((r for r in records if r["name"] == name), key=lambda r: r["seed"])


def aggregate_table(
    records: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``{name: {metric: {"mean", "std", "n", "values"}}}`` over seeds, for `TABLE_METRICS`
    (std with ddof 1; None with one seed)."""
    table = {}
    for name in names:
        runs = _by_name(records, name)
        if runs:
            table[name] = {m: _mean_std([r["test"].get(m) for r in runs]) for m in TABLE_METRICS}
            table[name]["seeds"] = [r["seed"] for r in runs]
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
    records: Sequence[Mapping[str, Any]],
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
    base = {r["seed"]: r for r in _by_name(records, baseline)}
    out: dict[str, dict[str, Any]] = {}
    if not base:
        return out
    for name in names:
        if name == baseline:
            continue
        runs = [r for r in _by_name(records, name) if r["seed"] in base]
        if not runs:
            continue
        out[name] = {}
        for metric in PAIRED_METRICS:
            pairs = [
                (r["seed"], r["test"].get(metric), base[r["seed"]]["test"].get(metric))
                for r in runs
            ]
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
    records: Sequence[Mapping[str, Any]],
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
        row = {f: _mean_std([r["dynamics"].get(f) for r in runs]) for f in fields}
        for scope in ("shared", "all"):
            own = [r["noise"][f"trace_{scope}"] for r in runs if "noise" in r]
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


def sweep_table(records: Sequence[Mapping[str, Any]], config: CompareConfig) -> dict[str, Any]:
    """``{param: [{"value", "name", metric: {"mean", "std", ...}}]}`` of the sweep (the other
    two hyper-parameters at ``config.base``'s values), for the CE, NLG and aux metrics."""
    out: dict[str, Any] = {}
    for param, values in config.sweep_grid.items():
        rows = []
        for value in values:
            name = CAMEGRAD if value == getattr(config.base, param) else _sweep_name(param, value)
            runs = _by_name(records, name)
            row: dict[str, Any] = {"value": value, "name": name}
            row.update({m: _mean_std([r["test"].get(m) for r in runs]) for m in TABLE_METRICS})
            rows.append(row)
        out[param] = rows
    out["fixed"] = {p: getattr(config.base, p) for p in DEFAULT_SWEEP}
    return out


def _notes(config: CompareConfig, records: Sequence[Mapping[str, Any]]) -> list[str]:
    notes = [
        "Test metrics of each run's best checkpoint (by val example-based CE F1); CE labels "
        "both generated and reference reports with the rule-based labeler.",
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
    if any(r["test"].get("METEOR") is None for r in records):
        notes.append("METEOR not computed for some or all runs (meteor_test off or no Java).")
    return notes


# ----------------------------------------------------------------------------------------------
# Output.


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _cell(entry: Mapping[str, Any], digits: int = 3) -> str:
    if entry["mean"] is None:
        return "–"
    if entry["std"] is None:
        return _fmt(entry["mean"], digits)
    return f"{_fmt(entry['mean'], digits)} ± {_fmt(entry['std'], digits)}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _paper_columns(protocol: str) -> list[tuple[str, str]]:
    ce = [(f"{protocol}_{k}", label) for k, label in _CE.items() if k != "avg"]
    no_nf = (f"{protocol}_no_nf_f1", "F1 w/o NF")
    return [*ce, no_nf, *_NLG.items(), (f"{protocol}_avg", _CE["avg"])]


def markdown_tables(summary: Mapping[str, Any]) -> dict[str, str]:
    """The markdown of ``table``, ``paired``, ``dynamics`` and ``sweep`` (when present)."""
    table = summary["table"]
    seeds = summary["config"]["seeds"]
    parts = [f"# Test metrics, mean ± std over seeds {seeds}\n"]
    constant = summary.get("constant_report")
    for protocol, text in _PROTOCOLS.items():
        columns = _paper_columns(protocol)
        rows = [[name] + [_cell(row[k]) for k, _ in columns] for name, row in table.items()]
        if constant is not None:
            rows.append(
                ["*one constant report (best on train)*"]
                + [_fmt(constant["metrics"].get(k)) for k, _ in columns]
            )
        parts.append(f"## {text}\n\n" + _markdown(["Method", *(c for _, c in columns)], rows))
    rows = [[name] + [_cell(row[k]) for k in _AUX] for name, row in table.items()]
    parts.append("## Auxiliary head (test)\n\n" + _markdown(["Method", *_AUX.values()], rows))
    parts.append("Notes:\n" + "\n".join(f"- {note}" for note in summary["notes"]))
    out = {"table": "\n\n".join(parts) + "\n"}

    paired = summary["paired"]
    if paired:
        lines = [f"# Paired comparison against {BASELINE} (per-seed differences)\n"]
        header = ["Metric", "mean diff", "CI low", "CI high", "p (sign-flip)", "verdict"]
        for name, metrics in paired.items():
            rows = [
                [
                    m,
                    f"{e['mean']:+.4f}",
                    f"{e['ci_low']:+.4f}",
                    f"{e['ci_high']:+.4f}",
                    f"{e['p_sign_flip']:.2f}",
                    e["verdict"],
                ]
                for m, e in metrics.items()
            ]
            lines.append(f"## {name}\n\n" + _markdown(header, rows) + "\n")
            lines.append("\n".join(f"- {e['sentence']}" for e in metrics.values()) + "\n")
        out["paired"] = "\n".join(lines)

    dynamics = summary["dynamics"]
    header = [
        "Method",
        "steps in conflict",
        "cosine mean",
        "collapse ratio",
        "collapse (last epoch)",
        "‖update‖/‖g_lin‖",
        "noise tr (shared)",
        "noise tr (all)",
        "noise tr shared @ linear θ",
        "noise tr all @ linear θ",
    ]
    keys = [
        "conflict_share",
        "cosine_mean",
        "collapse_ratio_mean",
        "collapse_ratio_last_epoch",
        "update_to_joint_norm_mean",
        "noise_trace_shared",
        "noise_trace_all",
        "noise_trace_shared_at_baseline",
        "noise_trace_all_at_baseline",
    ]
    rows = []
    for name, row in dynamics.items():
        cells = [name]
        for key in keys:
            entry = row.get(key)
            digits = 4 if key.startswith("noise") else 3
            cells.append("–" if entry is None else _cell(entry, digits))
        rows.append(cells)
    out["dynamics"] = (
        "# Gradient dynamics (shared parameters) and update-noise covariance trace\n\n"
        + _markdown(header, rows)
        + "\n\nPaper (REVTAF / PromptMRG on MIMIC-CXR, its Figure 3 and Appendices A, B.2): "
        "about 50 % of steps in conflict (53.8 % REVTAF, 49.8 % PromptMRG); noise-covariance "
        "trace 0.32 under linear scalarization vs 4.49 under CAME-Grad.\n"
    )

    if "sweep" in summary:
        sweep = summary["sweep"]
        fixed = ", ".join(f"{k} = {v:g}" for k, v in sweep["fixed"].items())
        columns = [
            ("ce_example_f1", "CE F1 (ex.)"),
            ("ce_example_avg", "CE Avg. (ex.)"),
            ("ce_label_macro_f1", "CE F1 (macro)"),
            ("BLEU_4", "B-4"),
            ("ROUGE_L", "R-L"),
            ("aux_auc_macro", "AUC macro"),
        ]
        rows = [
            [param, _format_value(row["value"])] + [_cell(row[k]) for k, _ in columns]
            for param, entries in sweep.items()
            if param != "fixed"
            for row in entries
        ]
        out["sweep"] = (
            f"# CAME-Grad sensitivity (one at a time around {fixed})\n\n"
            + _markdown(["Parameter", "Value", *(c for _, c in columns)], rows)
            + "\n"
        )
    return out


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _flat(entry: Mapping[str, Any] | None) -> list[Any]:
    return [None, None] if entry is None else [entry["mean"], entry["std"]]


def _write_outputs(summary: Mapping[str, Any], config: CompareConfig, specs) -> list[str]:
    out = Path(config.out_dir)
    if "sweep" not in summary:  # A sweep of an earlier call must not pass for this one's.
        for stale in ("sweep.md", "sweep.csv", "sweep.json", "sweep.png"):
            (out / stale).unlink(missing_ok=True)
    written = []
    for name, text in markdown_tables(summary).items():
        (out / f"{name}.md").write_text(text, encoding="utf-8")
        written.append(f"{name}.md")

    table = summary["table"]
    header = ["method", "num_seeds"] + [f"{m}_{s}" for m in TABLE_METRICS for s in ("mean", "std")]
    rows = [
        [name, len(row["seeds"])] + [v for m in TABLE_METRICS for v in _flat(row[m])]
        for name, row in table.items()
    ]
    _write_csv(out / "table.csv", header, rows)
    written.append("table.csv")

    rows = [
        [name, metric, e["mean"], e["ci_low"], e["ci_high"], e["p_sign_flip"], e["verdict"]]
        + [json.dumps(e["differences"])]
        for name, metrics in summary["paired"].items()
        for metric, e in metrics.items()
    ]
    header = ["method", "metric", "mean_diff", "ci_low", "ci_high", "p_sign_flip", "verdict"]
    _write_csv(out / "paired.csv", [*header, "differences"], rows)
    written.append("paired.csv")

    dyn_keys = sorted({k for row in summary["dynamics"].values() for k in row})
    header = ["method"] + [f"{k}_{s}" for k in dyn_keys for s in ("mean", "std")]
    rows = [
        [name] + [v for k in dyn_keys for v in _flat(row.get(k))]
        for name, row in summary["dynamics"].items()
    ]
    _write_csv(out / "dynamics.csv", header, rows)
    written.append("dynamics.csv")

    parts = {"table": summary["table"], "paired": summary["paired"]}
    parts["dynamics"] = summary["dynamics"]
    if "sweep" in summary:
        parts["sweep"] = summary["sweep"]
        metrics = ("ce_example_f1", "ce_example_avg", "ce_label_macro_f1", "aux_auc_macro")
        header = ["param", "value", "name"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
        rows = [
            [param, row["value"], row["name"]] + [v for m in metrics for v in _flat(row[m])]
            for param, entries in summary["sweep"].items()
            if param != "fixed"
            for row in entries
        ]
        _write_csv(out / "sweep.csv", header, rows)
        written.append("sweep.csv")
    for name, value in parts.items():
        (out / f"{name}.json").write_text(json.dumps(value, indent=1), encoding="utf-8")
        written.append(f"{name}.json")
    written += write_figures(summary, out, specs)
    return written


# ----------------------------------------------------------------------------------------------
# Figures.


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def _step_logs(specs: Sequence[RunSpec], names: Sequence[str]) -> dict[str, list[Any]]:
    from camegrad_jax.rrg.train import STEP_LOG_FILE

    logs: dict[str, list[Any]] = {name: [] for name in names}
    for spec in specs:
        if spec.name in logs:
            logs[spec.name].append(dict(np.load(spec.run_dir / STEP_LOG_FILE)))
    return logs


def _save(fig: Any, path: Path) -> str:
    """Writes and closes ``fig``; returns the file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _plot_seed_mean(
    ax: Any, logs: Sequence[Mapping[str, np.ndarray]], field: str, label: str, colour: Any
) -> None:
    """One step-log field, averaged over seeds, as a moving average over 1/25 of the run."""
    values = np.mean([log[field] for log in logs], axis=0)
    ax.plot(
        np.arange(1, len(values) + 1),
        _smooth(values, max(1, len(values) // 25)),
        label=label,
        color=colour,
    )


def write_figures(
    summary: Mapping[str, Any], out_dir: str | Path, specs: Sequence[RunSpec]
) -> list[str]:
    """The figures of a comparison (matplotlib, Agg); returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    names = list(summary["table"])
    logs = _step_logs(specs, names)
    # Black and red are linear scalarization's and CAME-Grad's; the others take the palette's
    # remaining colours (its reds left out, so no method is mistaken for CAME-Grad).
    others = [name for name in names if name not in (BASELINE, CAMEGRAD)]
    palette, reds = (
        (plt.get_cmap("tab10"), {3}) if len(others) <= 9 else (plt.get_cmap("tab20"), {6, 7})
    )
    choices = [palette(i) for i in range(palette.N) if i not in reds]
    colours = {name: choices[i % len(choices)] for i, name in enumerate(others)}
    colours.update({BASELINE: "black", CAMEGRAD: "tab:red"})
    written = []

    with_stats = [n for n in names if logs[n] and "cosine_similarity" in logs[n][0]]
    if with_stats:
        cols = min(4, len(with_stats))
        rows = math.ceil(len(with_stats) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), squeeze=False)
        for ax, name in zip(axes.flat, with_stats, strict=False):
            cosine = np.concatenate([log["cosine_similarity"] for log in logs[name]])
            share = float(np.mean(cosine < 0))
            ax.hist(cosine, bins=np.linspace(-1, 1, 41), color=colours[name], alpha=0.85)
            ax.axvline(0.0, color="black", lw=0.8)
            ax.set_title(name, fontsize=9)
            ax.text(
                0.03,
                0.95,
                f"conflict {share:.0%}\nmean cos {cosine.mean():+.2f}",
                transform=ax.transAxes,
                va="top",
                fontsize=8,
            )
            ax.set_xlabel("cos(g_lm, g_cls)", fontsize=8)
        for ax in list(axes.flat)[len(with_stats) :]:
            ax.axis("off")
        fig.suptitle(
            "Cosine of the two task gradients over training\n(shared parameters, all seeds; "
            "paper: ~50 % of steps in conflict)",
            fontsize=10,
        )
        written.append(_save(fig, out / "cosine_hist.png"))

        fig, ax = plt.subplots(figsize=(7.5, 4))
        for name in with_stats:
            _plot_seed_mean(ax, logs[name], "magnitude_collapse_ratio", name, colours[name])
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xlabel("step")
        ax.set_ylabel("‖Σ λ_i g_i‖ / Σ ‖λ_i g_i‖")
        ax.set_title("Magnitude-collapse ratio (mean over seeds, moving average)")
        ax.legend(fontsize=7, ncol=2)
        written.append(_save(fig, out / "collapse_ratio.png"))

    dynamics = summary["dynamics"]
    noisy = [n for n in names if "noise_trace_shared" in dynamics.get(n, {})]
    if noisy:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, scope in zip(axes, ("shared", "all"), strict=True):
            x = np.arange(len(noisy))
            own = [dynamics[n][f"noise_trace_{scope}"] for n in noisy]
            ax.bar(
                x - 0.2,
                [e["mean"] for e in own],
                0.4,
                label="own final θ",
                yerr=[e["std"] or 0.0 for e in own],
                color="tab:blue",
            )
            at_base = [dynamics[n].get(f"noise_trace_{scope}_at_baseline") for n in noisy]
            if any(at_base):
                ax.bar(
                    x + 0.2,
                    [e["mean"] if e else 0.0 for e in at_base],
                    0.4,
                    yerr=[(e["std"] or 0.0) if e else 0.0 for e in at_base],
                    label=f"{BASELINE}'s final θ",
                    color="tab:orange",
                )
            ax.set_xticks(x, noisy, rotation=30, ha="right", fontsize=8)
            heights = [e["mean"] for e in own] + [e["mean"] for e in at_base if e]
            if max(heights) > 10 * min(heights) > 0:
                ax.set_yscale("log")
            ax.set_title(f"tr Cov(update), {scope} parameters", fontsize=10)
            ax.legend(fontsize=8)
        fig.suptitle(
            "Update-noise covariance trace at the end of training\n"
            "(paper: 0.32 linear vs 4.49 CAME-Grad)",
            fontsize=10,
        )
        written.append(_save(fig, out / "noise_trace.png"))

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name in names:
        if not logs[name]:
            continue
        for ax, field in zip(axes[:2], ("loss_lm", "loss_cls"), strict=True):
            _plot_seed_mean(ax, logs[name], field, name, colours[name])
        curves = [r["val_ce_example_f1"] for r in summary["runs"] if r["name"] == name]
        length = min(len(c) for c in curves)
        f1 = np.mean([c[:length] for c in curves], axis=0)
        axes[2].plot(
            np.arange(1, length + 1), f1, marker="o", ms=3, label=name, color=colours[name]
        )
    axes[0].set_title("L_lm (train, moving average)")
    axes[1].set_title("L_cls (train, moving average)")
    axes[2].set_title("val CE F1 (example-based) per epoch")
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("step")
    axes[2].set_xlabel("epoch")
    axes[2].legend(fontsize=7, ncol=2)
    written.append(_save(fig, out / "training_curves.png"))

    if "sweep" in summary:
        sweep = summary["sweep"]
        params = [p for p in sweep if p != "fixed"]
        fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.6), squeeze=False)
        baseline = summary["table"].get(BASELINE)
        for ax, param in zip(axes[0], params, strict=True):
            rows = sweep[param]
            values = [row["value"] for row in rows]
            for metric, label in (
                ("ce_example_f1", "CE F1 (example)"),
                ("ce_label_macro_f1", "CE F1 (label-macro)"),
                ("aux_auc_macro", "aux AUC macro"),
            ):
                mean = [row[metric]["mean"] for row in rows]
                std = [row[metric]["std"] or 0.0 for row in rows]
                ax.errorbar(values, mean, yerr=std, marker="o", capsize=3, label=label)
                if baseline is not None and baseline[metric]["mean"] is not None:
                    ax.axhline(baseline[metric]["mean"], ls=":", lw=0.8, color="grey")
            ax.set_xlabel(param)
            ax.set_title(f"vary {param}", fontsize=10)
        axes[0][0].legend(fontsize=7)
        fixed = ", ".join(f"{k}={v:g}" for k, v in sweep["fixed"].items())
        fig.suptitle(f"CAME-Grad sensitivity (others at {fixed}; dotted: {BASELINE})", fontsize=10)
        written.append(_save(fig, out / "sweep.png"))
    return written


def format_summary(summary: Mapping[str, Any]) -> str:
    """A terminal summary: the main table, the dynamics and the paired verdicts of the headline
    metrics."""
    table, dynamics = summary["table"], summary["dynamics"]
    header = (
        f"{'method':22s} {'CE F1 ex':>15s} {'CE F1 ex w/o NF':>15s} {'CE F1 macro':>15s} "
        f"{'CE Avg ex':>15s} {'B-4':>15s} {'AUC':>15s} {'conflict':>9s} {'collapse':>9s} "
        f"{'noise tr':>10s}"
    )
    lines = [f"seeds {summary['config']['seeds']}", header]
    for name, row in table.items():
        dyn = dynamics.get(name, {})
        conflict = dyn.get("conflict_share", {}).get("mean")
        collapse = dyn.get("collapse_ratio_mean", {}).get("mean")
        noise = dyn.get("noise_trace_shared", {}).get("mean")
        lines.append(
            f"{name:22s} {_cell(row['ce_example_f1']):>15s}"
            f" {_cell(row['ce_example_no_nf_f1']):>15s} {_cell(row['ce_label_macro_f1']):>15s}"
            f" {_cell(row['ce_example_avg']):>15s} {_cell(row['BLEU_4']):>15s}"
            f" {_cell(row['aux_auc_macro']):>15s} "
            f"{'–' if conflict is None else f'{conflict:.0%}':>9s} {_fmt(collapse):>9s} "
            f"{_fmt(noise, 4):>10s}"
        )
    constant = summary.get("constant_report")
    if constant is not None:
        metrics = constant["metrics"]
        lines.append(
            f"{'(one constant report)':22s} {_fmt(metrics['ce_example_f1']):>15s} "
            f"{_fmt(metrics.get('ce_example_no_nf_f1')):>15s} "
            f"{_fmt(metrics['ce_label_macro_f1']):>15s} {_fmt(metrics['ce_example_avg']):>15s} "
            f"{_fmt(metrics['BLEU_4']):>15s}"
        )
    headline = ("ce_example_f1", "ce_example_avg", "ce_label_macro_f1", "ce_label_macro_avg")
    for name, metrics in summary["paired"].items():
        if name in (CAMEGRAD, *CAMEGRAD_FAMILY) or len(summary["paired"]) <= 3:
            lines += [metrics[m]["sentence"] for m in headline if m in metrics]
    if "sweep" in summary:
        lines.append("sweep (CE F1 example-based, mean over seeds):")
        for param, rows in summary["sweep"].items():
            if param != "fixed":
                cells = ", ".join(
                    f"{param}={_format_value(r['value'])}: {_fmt(r['ce_example_f1']['mean'])}"
                    for r in rows
                )
                lines.append(f"  {cells}")
    lines.append("noise tr = trace of the update-noise covariance, shared parameters.")
    return "\n".join(lines)
