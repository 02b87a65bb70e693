"""The paper's rigidity claim, re-measured on the reference setup's auxiliary-task variants.

The paper's Table D.1 sorts its backbones by how rigid the auxiliary task's constraint is and
finds CAME-Grad's best α falls with it: rigid constraints (multi-label classification,
retrieval and alignment) at α 0.1–0.2, soft ones (weakly supervised contrastive) at 0.8–0.9.
Its explanation: a rigid auxiliary task conflicts more with report generation, and a small α
keeps more of the conflict-averse direction.

For each variant of `camegrad_jax.rrg.aux_tasks` one comparison
(`camegrad_jax.rrg.compare.run_comparison`, i.e. ``camegrad-rrg compare --aux …``) trains
linear scalarization and CAME-Grad at α ∈ `RIGIDITY_ALPHAS` (γ, c at their defaults) for every
seed. From linear scalarization's per-step log it takes the *conflict ratio* (share of steps
whose task gradients on the shared encoder have a negative cosine) and the *collapse ratio*
(the magnitude-collapse ratio of the two gradients); from the α sweep, three test scores per α
(`SCORE_FIELDS`): CE F1 (example-based), BLEU-4, and the auxiliary task's own score
(`AUX_METRIC`), and for each the α that scores best. :func:`rigidity_rows` turns the
comparisons' summaries into one :class:`RigidityRow` per variant, :func:`write_rigidity`
writes the table and the figure.

**Settings** (`SETTINGS`, ``--setting``). ``quick`` (the default) is the demo's setting
(`camegrad_jax.rrg.compare_plan.QUICK_FIELDS`: 600 training studies, 9 epochs of batch 16, the
default model), where the decoder learns to write reports and to stop; checkpoints are selected
by validation CE F1 without No Finding, on which a report that names no finding scores 0 (see the
results page, "Model selection"). ``full`` is the default configuration with the same selection
(hours on a CPU). ``reduced`` (`REDUCED_FIELDS`) trains a much smaller model on smaller data
(32 × 32 images, a 32-wide transformer, 256 training studies for 5 epochs): it was the first
attempt to fit the whole measurement into 40 minutes, and its decoder never learns to stop, so
its CE F1 cannot rank α; it stays for exact reproduction of that table. In every setting
CAME-Grad's Stage 1 uses the loop-free ``solver="enumerate"`` (exact for K ≤ 8, equal to the
default solver to round-off), because each α is a separate compilation and the default solver's
train step compiles several times slower on a CPU.

Run it with ``python -m camegrad_jax.rrg.rigidity --out runs/rigidity`` (every variant, then
the table and figure; finished runs are reused). Each variant is two comparisons
(`compare_configs`); the same measurement at any other size is ``camegrad-rrg compare --aux
VARIANT --methods linear,camegrad --sweep --sweep-alpha 0.1,0.2,0.5,0.9 --sweep-gamma 1.5
--sweep-c 0.5`` (with the default solver).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from camegrad_jax.rrg.compare import run_comparison
from camegrad_jax.rrg.compare_plan import (
    BASELINE,
    CAMEGRAD,
    QUICK_FIELDS,
    SUMMARY_FILE,
    CompareConfig,
)
from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.rundir import persistent_compilation_cache

__all__ = [
    "REDUCED_FIELDS",
    "RIGIDITY_ALPHAS",
    "SETTINGS",
    "VARIANTS",
    "AUX_METRIC",
    "SCORE_FIELDS",
    "RigidityRow",
    "Scores",
    "Variant",
    "compare_configs",
    "rigidity_rows",
    "write_rigidity",
]

RIGIDITY_ALPHAS: tuple[float, ...] = (0.1, 0.2, 0.5, 0.9)
RIGIDITY_SEEDS: tuple[int, ...] = (0, 1, 2)

REDUCED_FIELDS: dict[str, Any] = {
    "synthetic_train_size": 256,
    "synthetic_val_size": 48,
    "synthetic_test_size": 96,
    "image_size": 32,
    "conv_features": (16, 32, 32),
    "norm_groups": 8,
    "d_model": 32,
    "num_heads": 2,
    "d_ff": 64,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "max_len": 40,
    "batch_size": 16,
    "epochs": 5,
    "eval_every": 5,
    "eval_batch_size": 48,
    "learning_rate": 3e-3,
    "meteor_test": False,
}

# Selection that a report naming no finding cannot win (see the module docstring).
_SELECTION = {"selection_metric": "ce_example_no_nf_f1"}
# Setting name -> (the `TrainConfig` fields every run of the measurement starts from, the
# description the table's preamble gives).
SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "quick": (
        {**QUICK_FIELDS, **_SELECTION},
        "the demo's setting (`camegrad_jax.rrg.compare_plan.QUICK_FIELDS`: 600 training "
        "studies, 9 epochs), best checkpoint by val CE F1 without No Finding",
    ),
    "full": (
        dict(_SELECTION),
        "the default configuration, best checkpoint by val CE F1 without No Finding",
    ),
    "reduced": (
        REDUCED_FIELDS,
        "the reduced configuration (`camegrad_jax.rrg.rigidity.REDUCED_FIELDS`), best "
        "checkpoint by val CE F1",
    ),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """An auxiliary-task variant and where the paper puts its kind.

    Attributes:
      name: folder and row name.
      aux, alignment_weak: its `TrainConfig` fields.
      paper_backbones: the paper's backbone with this kind of auxiliary task.
      paper_family: its Table D.1 group (rigid, prototype or soft constraints).
      paper_alpha: its best α in Table D.1.
    """

    name: str
    aux: str
    alignment_weak: bool
    paper_backbones: str
    paper_family: str
    paper_alpha: str


VARIANTS: tuple[Variant, ...] = (
    Variant("classification", "classification", False, "DCL", "rigid", "0.2"),
    Variant("classification-prompt", "classification-prompt", False, "PromptMRG", "rigid", "0.1"),
    Variant("alignment", "alignment", False, "REVTAF", "rigid", "0.2"),
    Variant("alignment-weak", "alignment", True, "WCL", "soft", "0.9"),
)


# The test metric that scores each variant's auxiliary task.
AUX_METRIC: dict[str, str] = {
    "classification": "aux_auc_macro",
    "classification-prompt": "aux_auc_macro",
    "alignment": "aux_retrieval_r5",
}
# (field of `Scores`, column label); a best α is found for each.
SCORE_FIELDS: tuple[tuple[str, str], ...] = (
    ("ce_f1", "CE F1"),
    ("ce_f1_no_nf", "CE F1 w/o NF"),
    ("bleu4", "B-4"),
    ("aux", "aux"),
)


@dataclasses.dataclass(frozen=True)
class Scores:
    """Test scores of one configuration, means over seeds (None where not measured).

    Attributes:
      ce_f1, ce_f1_std: CE F1 (example-based) and its std over seeds.
      ce_f1_no_nf: the same without the No Finding label (a normal report scores 0 on it).
      bleu4: BLEU-4.
      aux: the auxiliary task's own score (`AUX_METRIC`: label-head macro AUC, or image→report
        recall@5).
    """

    ce_f1: float | None
    ce_f1_std: float | None
    bleu4: float | None
    aux: float | None
    ce_f1_no_nf: float | None = None


@dataclasses.dataclass(frozen=True)
class RigidityRow:
    """The measurement of one variant (means and stds over seeds; None where not measured).

    Attributes:
      variant: the variant.
      seeds: number of seeds of the linear run.
      conflict, conflict_std: linear scalarization's share of steps in conflict.
      cosine: linear scalarization's mean cosine of the two task gradients.
      collapse, collapse_std: linear scalarization's mean magnitude-collapse ratio.
      linear: linear scalarization's scores.
      alphas: the α values of the sweep; sweep: CAME-Grad's scores at each.
    """

    variant: Variant
    seeds: int
    conflict: float | None
    conflict_std: float | None
    cosine: float | None
    collapse: float | None
    collapse_std: float | None
    linear: Scores
    alphas: tuple[float, ...]
    sweep: tuple[Scores, ...]

    def at(self, alpha: float) -> Scores | None:
        """The scores at ``alpha`` (None where it was not run)."""
        return self.sweep[self.alphas.index(alpha)] if alpha in self.alphas else None

    def best_alpha(self, field: str) -> float | str | None:
        """The α of the highest mean ``field`` (a name of `Scores`), ``"tie"`` when several
        share it (to 1e-9), None when nothing was measured."""
        scored = [(getattr(s, field), a) for s, a in zip(self.sweep, self.alphas, strict=True)]
        scored = [(value, alpha) for value, alpha in scored if value is not None]
        if not scored:
            return None
        top = max(value for value, _ in scored)
        best = [alpha for value, alpha in scored if value >= top - 1e-9]
        return best[0] if len(best) == 1 else "tie"


def compare_configs(
    variant: Variant,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = RIGIDITY_SEEDS,
    alphas: Sequence[float] = RIGIDITY_ALPHAS,
    fields: Mapping[str, Any] | None = None,
) -> tuple[CompareConfig, CompareConfig]:
    """The two comparisons measuring ``variant`` on ``fields`` (default: the ``quick`` setting
    of `SETTINGS`), with no noise traces: linear scalarization (``OUT/<variant>/linear``), and
    CAME-Grad's α sweep with its enumerate solver (``OUT/<variant>/alpha``). Two, because a
    comparison gives every method the same ``method_options`` and linear scalarization takes no
    ``solver``."""
    base = TrainConfig(
        **(SETTINGS["quick"][0] if fields is None else fields),
        aux=variant.aux,
        alignment_weak=variant.alignment_weak,
    )
    folder = Path(out_dir) / variant.name
    linear = CompareConfig(
        out_dir=str(folder / "linear"),
        base=base,
        methods=(BASELINE,),
        seeds=tuple(seeds),
        noise_methods=(),
        bootstrap_resamples=1000,
    )
    sweep = CompareConfig(
        out_dir=str(folder / "alpha"),
        base=base.replace(method_options={"solver": "enumerate"}),
        methods=(CAMEGRAD,),
        seeds=tuple(seeds),
        noise_methods=(),
        sweep=True,
        sweep_grid={"alpha": tuple(alphas)},
        bootstrap_resamples=1000,
    )
    return linear, sweep


def _stat(entry: Mapping[str, Any] | None, key: str = "mean") -> float | None:
    return None if entry is None else entry.get(key)


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    kept = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not kept:
        return None, None
    return float(np.mean(kept)), float(np.std(kept, ddof=1)) if len(kept) > 1 else None


def _scores(summary: Mapping[str, Any], name: str, aux_metric: str) -> Scores:
    """Scores of the runs called ``name`` in a comparison's summary, from their test metrics
    (the summary's own tables leave out the retrieval scores)."""
    tests = [run["test"] for run in summary["runs"] if run["name"] == name]
    ce_f1, ce_f1_std = _mean_std([test.get("ce_example_f1") for test in tests])
    return Scores(
        ce_f1=ce_f1,
        ce_f1_std=ce_f1_std,
        bleu4=_mean_std([test.get("BLEU_4") for test in tests])[0],
        aux=_mean_std([test.get(aux_metric) for test in tests])[0],
        ce_f1_no_nf=_mean_std([test.get("ce_example_no_nf_f1") for test in tests])[0],
    )


def rigidity_rows(
    linear: Mapping[str, Mapping[str, Any]], sweeps: Mapping[str, Mapping[str, Any]]
) -> list[RigidityRow]:
    """One row per variant of `VARIANTS` found in both ``linear`` and ``sweeps`` (variant
    name → the ``summary.json`` of its linear comparison / of its α sweep, see
    `compare_configs`), in `VARIANTS` order."""
    rows = []
    for variant in VARIANTS:
        if variant.name not in linear or variant.name not in sweeps:
            continue
        dynamics = linear[variant.name]["dynamics"].get(BASELINE, {})
        table = linear[variant.name]["table"].get(BASELINE, {})
        sweep = sweeps[variant.name]["sweep"]["alpha"]
        aux_metric = AUX_METRIC[variant.aux]
        rows.append(
            RigidityRow(
                variant=variant,
                seeds=len(table.get("seeds", [])),
                conflict=_stat(dynamics.get("conflict_share")),
                conflict_std=_stat(dynamics.get("conflict_share"), "std"),
                cosine=_stat(dynamics.get("cosine_mean")),
                collapse=_stat(dynamics.get("collapse_ratio_mean")),
                collapse_std=_stat(dynamics.get("collapse_ratio_mean"), "std"),
                linear=_scores(linear[variant.name], BASELINE, aux_metric),
                alphas=tuple(row["value"] for row in sweep),
                sweep=tuple(
                    _scores(sweeps[variant.name], row["name"], aux_metric) for row in sweep
                ),
            )
        )
    return rows


def _fmt(value: float | None, std: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def _cell(scores: Scores | None) -> str:
    if scores is None:
        return "–"
    return " / ".join(_fmt(getattr(scores, field)) for field, _ in SCORE_FIELDS)


def markdown_table(rows: Sequence[RigidityRow]) -> str:
    """The rigidity table in Markdown: the paper's grouping beside what was measured. Score
    cells read "CE F1 / CE F1 w/o NF / B-4 / aux"."""
    alphas = sorted({a for row in rows for a in row.alphas}) or list(RIGIDITY_ALPHAS)
    header = [
        "variant",
        "paper's backbone",
        "Table D.1 group",
        "paper's best α",
        "conflict ratio (linear)",
        "collapse ratio (linear)",
        "cosine (linear)",
        "linear",
        *(f"α={a:g}" for a in alphas),
        *(f"best α by {label}" for _, label in SCORE_FIELDS),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        best = [row.best_alpha(field) for field, _ in SCORE_FIELDS]
        cells = [
            f"`{row.variant.name}`",
            row.variant.paper_backbones,
            row.variant.paper_family,
            row.variant.paper_alpha,
            _fmt(row.conflict, row.conflict_std, 2),
            _fmt(row.collapse, row.collapse_std, 2),
            _fmt(row.cosine),
            _cell(row.linear),
            *(_cell(row.at(a)) for a in alphas),
            *("–" if b is None else b if isinstance(b, str) else f"{b:g}" for b in best),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_figure(rows: Sequence[RigidityRow], path: str | Path) -> str:
    """One panel per score (`SCORE_FIELDS`) against α, a line per variant (dashed: its linear
    scalarization). Returns the path written."""
    matplotlib.use("Agg")
    fig, axes = plt.subplots(1, len(SCORE_FIELDS), figsize=(4.2 * len(SCORE_FIELDS), 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (field, label) in zip(axes, SCORE_FIELDS, strict=True):
        for row, color in zip(rows, colors, strict=False):
            mean = [getattr(s, field) for s in row.sweep]
            mean = np.array([np.nan if v is None else v for v in mean], dtype=np.float64)
            ax.plot(row.alphas, mean, marker="o", color=color, label=row.variant.name)
            baseline = getattr(row.linear, field)
            if baseline is not None:
                ax.axhline(baseline, color=color, linestyle="--", linewidth=0.8)
        ax.set_xlabel("CAME-Grad α")
        ax.set_title(label if field != "aux" else "aux (AUC macro / retrieval R@5)", fontsize=10)
    if rows:  # An empty table (nothing measured yet) has no lines to name.
        axes[0].legend(fontsize=8)
    fig.suptitle("Test scores by α, mean over seeds (dashed: linear scalarization)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_rigidity(
    rows: Sequence[RigidityRow],
    markdown_path: str | Path,
    figure_path: str | Path,
    setting: str = "quick",
) -> None:
    """Write the table (with a short preamble saying which of `SETTINGS` was measured) to
    ``markdown_path`` and the figure."""
    figure = write_figure(rows, figure_path)
    text = [
        "# Rigidity of the auxiliary task and CAME-Grad's best α",
        "",
        f"Measured by `python -m camegrad_jax.rrg.rigidity --setting {setting}`: "
        f"{SETTINGS[setting][1]}; synthetic v2 data, "
        f"{rows[0].seeds if rows else 0} seeds; means ± std over seeds. Conflict ratio: share "
        "of steps whose two task gradients on the shared encoder have a negative cosine; "
        "collapse ratio: the magnitude-collapse ratio of the two gradients (both from the linear "
        "scalarization runs). Score cells: test CE F1 (example-based) / the same without "
        "No Finding / BLEU-4 / the auxiliary task's own score (label-head macro AUC; "
        "image→report recall@5 for alignment).",
        "",
        markdown_table(rows),
        "",
        f"![Test scores by α]({Path(figure).name})",
        "",
    ]
    measured = {row.variant.name for row in rows}
    missing = [v.name for v in VARIANTS if v.name not in measured]
    if missing:
        text += [
            f"Not measured in this table: {', '.join(f'`{name}`' for name in missing)} "
            f"(run `python -m camegrad_jax.rrg.rigidity --variants {','.join(missing)}`).",
            "",
        ]
    Path(markdown_path).write_text("\n".join(text), encoding="utf-8")


def _load_summaries(out_dir: Path, part: str) -> dict[str, dict[str, Any]]:
    summaries = {}
    for variant in VARIANTS:
        path = out_dir / variant.name / part / SUMMARY_FILE
        if path.is_file():
            summaries[variant.name] = json.loads(path.read_text(encoding="utf-8"))
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparisons of the chosen variants (finished runs are reused), then write the
    table and figure of every variant measured so far."""
    parser = argparse.ArgumentParser(prog="python -m camegrad_jax.rrg.rigidity")
    parser.add_argument("--out", default="runs/rigidity", help="output folder (%(default)s)")
    parser.add_argument(
        "--variants",
        default=",".join(v.name for v in VARIANTS),
        help="comma-separated variants to run (default: all); 'none' only writes the table",
    )
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (%(default)s)")
    parser.add_argument("--doc", default=None, help="Markdown file for the table (default OUT)")
    parser.add_argument(
        "--setting",
        choices=tuple(SETTINGS),
        default="quick",
        help="what every run trains: the demo's setting (%(default)s), the default "
        "configuration (full; hours on a CPU) or the reduced one of the first measurement",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    by_name = {v.name: v for v in VARIANTS}
    chosen = [] if args.variants == "none" else args.variants.split(",")
    unknown = [name for name in chosen if name not in by_name]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose among {list(by_name)}")
    # Runs that differ only in their seed compile the same programs: load them from disk.
    with persistent_compilation_cache(out / ".jax_cache"):
        return _run(args, out, [by_name[name] for name in chosen])


def _run(args: argparse.Namespace, out: Path, chosen: list) -> int:
    seeds = tuple(int(s) for s in args.seeds.split(","))
    for variant in chosen:
        fields = SETTINGS[args.setting][0]
        for config in compare_configs(variant, out, seeds=seeds, fields=fields):
            run_comparison(config, progress=False)
        print(f"{variant.name}: done", flush=True)
    markdown = Path(args.doc) if args.doc else out / "rigidity.md"
    markdown.parent.mkdir(parents=True, exist_ok=True)
    rows = rigidity_rows(_load_summaries(out, "linear"), _load_summaries(out, "alpha"))
    write_rigidity(rows, markdown, markdown.with_suffix(".png"), args.setting)
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
