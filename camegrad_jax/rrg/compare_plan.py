"""What a comparison is: its configuration, the runs it plans, and the record each run leaves.

:class:`CompareConfig` names the methods, seeds, noise measurements and sweep;
:func:`plan_runs` turns it into one :class:`RunSpec` per training run; each finished run gives a
:class:`RunRecord`, which the statistics (:mod:`camegrad_jax.rrg.compare_stats`), the tables
(:mod:`camegrad_jax.rrg.compare_tables`) and the figures (:mod:`camegrad_jax.rrg.compare_figures`)
read. :mod:`camegrad_jax.rrg.compare` runs the plan.

Example:
  >>> from camegrad_jax.rrg.compare_plan import CompareConfig, plan_runs
  >>> specs = plan_runs(CompareConfig(out_dir="out", methods=("linear", "camegrad"), seeds=(0,)))
  >>> [(spec.name, spec.seed, str(spec.run_dir)) for spec in specs]
  [('linear', 0, 'out/runs/linear/seed0'), ('camegrad', 0, 'out/runs/camegrad/seed0')]
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import camegrad_jax
from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.optim import MULTITASK_METHODS, available_methods
from camegrad_jax.rrg.results import Record

__all__ = [
    "AUX_COLUMNS",
    "BASELINE",
    "CAMEGRAD",
    "CAMEGRAD_FAMILY",
    "CE_COLUMNS",
    "CE_PROTOCOLS",
    "DEFAULT_SWEEP",
    "NLG_COLUMNS",
    "PAIRED_METRICS",
    "QUICK_FIELDS",
    "QUICK_METHODS",
    "QUICK_NOISE_BATCHES",
    "QUICK_SEEDS",
    "SUMMARY_FILE",
    "SUMMARY_FORMAT",
    "TABLE_METRICS",
    "CompareConfig",
    "RunRecord",
    "RunSpec",
    "format_value",
    "plan_runs",
    "sweep_name",
]

BASELINE = "linear"
CAMEGRAD = "camegrad"
# CAME-Grad and its registered ablations and variants.
CAMEGRAD_FAMILY = (CAMEGRAD,) + tuple(
    info.name for info in camegrad_jax.registered_methods() if info.variant_of == CAMEGRAD
)
SUMMARY_FILE = "summary.json"
SUMMARY_FORMAT = "camegrad-rrg-compare/1"

# The test metrics of the tables: (key in results.json's "test", column label).
CE_COLUMNS = {"precision": "Prec.", "recall": "Rec.", "f1": "F1", "avg": "CE Avg."}
NLG_COLUMNS = {
    "BLEU_1": "B-1",
    "BLEU_2": "B-2",
    "BLEU_3": "B-3",
    "BLEU_4": "B-4",
    "METEOR": "MTR",
    "ROUGE_L": "R-L",
}
AUX_COLUMNS = {
    "aux_auc_macro": "AUC macro",
    "aux_auc_micro": "AUC micro",
    "aux_f1_macro": "F1 macro",
}
TABLE_METRICS: tuple[str, ...] = (
    *(f"ce_example_{name}" for name in CE_COLUMNS),
    *(f"ce_label_macro_{name}" for name in CE_COLUMNS),
    # CE F1 over the 13 findings (no `no_finding`): a "normal" report cannot score there.
    "ce_example_no_nf_f1",
    "ce_label_macro_no_nf_f1",
    *NLG_COLUMNS,
    *AUX_COLUMNS,
)
# Compared with the baseline seed by seed (higher is better for every one of them).
PAIRED_METRICS = TABLE_METRICS
CE_PROTOCOLS = {
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


def format_value(value: float) -> str:
    return f"{value:g}"


def sweep_name(param: str, value: float) -> str:
    return f"{CAMEGRAD}_{param}{format_value(value)}"


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
                    add(sweep_name(param, value), CAMEGRAD, seed, **{param: value})
    return list(specs.values())


@dataclasses.dataclass(frozen=True)
class RunRecord(Record):
    """What one run of a comparison gave: the ``runs`` entries of ``summary.json``.

    Attributes:
      name, method, seed: as in its `RunSpec`.
      hyper: its CAME-Grad ``c``, ``gamma``, ``alpha`` (whatever the method).
      run_dir: the run directory.
      how: ``"trained"``, ``"resumed"`` or ``"reused"`` (a finished run read back).
      test: every test metric of its best checkpoint.
      selection: where its best checkpoint was (``Selection.to_dict()``).
      val_ce_example_f1: validation example-based CE F1 of each validated epoch.
      train_losses: ``[L_lm, L_cls]`` of each epoch (means over its steps).
      dynamics: gradient statistics from its per-step log (``num_steps``, and with them
        ``conflict_share``, ``cosine_mean``, ``cosine_median``, ``collapse_ratio_mean``,
        ``collapse_ratio_last_epoch``, ``update_to_joint_norm_mean``).
      wall_seconds: its training time (across resumes).
      steps: its number of optimizer steps.
      noise: its update-noise measurement, for the ``noise_methods``; else None.
    """

    OMITTED_WHEN_NONE = ("noise",)

    name: str
    method: str
    seed: int
    hyper: dict[str, float]
    run_dir: str
    how: str
    test: dict[str, Any]
    selection: dict[str, Any]
    val_ce_example_f1: list[float | None]
    train_losses: list[list[float | None]]
    dynamics: dict[str, Any]
    wall_seconds: float
    steps: int
    noise: dict[str, Any] | None = None
