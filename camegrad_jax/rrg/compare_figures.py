"""The figures of a comparison (PNG, matplotlib's Agg backend).

``cosine_hist.png`` (the cosine of the two task gradients over training, per method),
``collapse_ratio.png`` (the magnitude-collapse ratio over steps), ``noise_trace.png`` (the
update-noise covariance trace, at each run's own final parameters and at the baseline's),
``training_curves.png`` (both training losses and validation CE F1), and with a sweep
``sweep.png``. Linear scalarization is black and CAME-Grad red in every figure.

Example:
  >>> from camegrad_jax.rrg.compare_figures import write_figures
  >>> names = write_figures(summary, "runs/compare", specs)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from camegrad_jax.rrg.compare_plan import BASELINE, CAMEGRAD, RunSpec
from camegrad_jax.rrg.results import STEP_LOG_FILE

__all__ = ["write_figures"]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def _step_logs(specs: Sequence[RunSpec], names: Sequence[str]) -> dict[str, list[Any]]:
    logs: dict[str, list[Any]] = {name: [] for name in names}
    for spec in specs:
        if spec.name in logs:
            logs[spec.name].append(dict(np.load(spec.run_dir / STEP_LOG_FILE)))
    return logs


def _save(fig: Any, path: Path) -> str:
    """Writes and closes ``fig``; returns the file name."""
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
    matplotlib.use("Agg")
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
                if all(m is None for m in mean):
                    continue  # Not measured for this model (e.g. no label head: no aux AUC).
                mean = [np.nan if m is None else m for m in mean]
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
