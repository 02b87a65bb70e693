"""The tables of a comparison: Markdown, CSV and JSON files, and the terminal summary.

:func:`markdown_tables` renders the test metrics in the paper's layout (both CE protocols, the
NLG metrics and the auxiliary head), the paired comparison, the gradient dynamics and the sweep;
:func:`write_tables` writes them with their CSV and JSON forms; :func:`format_summary` is what
``camegrad-rrg compare`` prints.

Example:
  >>> from camegrad_jax.rrg.compare_tables import format_cell
  >>> format_cell({"mean": 0.25, "std": 0.0312}), format_cell({"mean": 0.25, "std": None})
  ('0.250 ± 0.031', '0.250')
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from camegrad_jax.rrg.compare_plan import (
    AUX_COLUMNS,
    BASELINE,
    CAMEGRAD,
    CAMEGRAD_FAMILY,
    CE_COLUMNS,
    CE_PROTOCOLS,
    NLG_COLUMNS,
    TABLE_METRICS,
    format_value,
)

__all__ = ["format_cell", "format_number", "format_summary", "markdown_tables", "write_tables"]


def format_number(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; "–" for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def format_cell(entry: Mapping[str, Any], digits: int = 3) -> str:
    """A ``{"mean", "std"}`` entry as "mean ± std" (the mean alone with one seed)."""
    if entry["mean"] is None:
        return "–"
    if entry["std"] is None:
        return format_number(entry["mean"], digits)
    return f"{format_number(entry['mean'], digits)} ± {format_number(entry['std'], digits)}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _paper_columns(protocol: str) -> list[tuple[str, str]]:
    ce = [(f"{protocol}_{k}", label) for k, label in CE_COLUMNS.items() if k != "avg"]
    no_nf = (f"{protocol}_no_nf_f1", "F1 w/o NF")
    return [*ce, no_nf, *NLG_COLUMNS.items(), (f"{protocol}_avg", CE_COLUMNS["avg"])]


def markdown_tables(summary: Mapping[str, Any]) -> dict[str, str]:
    """The markdown of ``table``, ``paired``, ``dynamics`` and ``sweep`` (when present)."""
    table = summary["table"]
    seeds = summary["config"]["seeds"]
    parts = [f"# Test metrics, mean ± std over seeds {seeds}\n"]
    constant = summary.get("constant_report")
    for protocol, text in CE_PROTOCOLS.items():
        columns = _paper_columns(protocol)
        rows = [[name] + [format_cell(row[k]) for k, _ in columns] for name, row in table.items()]
        if constant is not None:
            rows.append(
                ["*one constant report (best on train)*"]
                + [format_number(constant["metrics"].get(k)) for k, _ in columns]
            )
        parts.append(f"## {text}\n\n" + _markdown(["Method", *(c for _, c in columns)], rows))
    rows = [[name] + [format_cell(row[k]) for k in AUX_COLUMNS] for name, row in table.items()]
    aux_header = ["Method", *AUX_COLUMNS.values()]
    parts.append("## Auxiliary head (test)\n\n" + _markdown(aux_header, rows))
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
            cells.append("–" if entry is None else format_cell(entry, digits))
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
            [param, format_value(row["value"])] + [format_cell(row[k]) for k, _ in columns]
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
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _flat(entry: Mapping[str, Any] | None) -> list[Any]:
    return [None, None] if entry is None else [entry["mean"], entry["std"]]


def write_tables(summary: Mapping[str, Any], out_dir: str | Path) -> list[str]:
    """Writes the tables of a comparison as ``.md``, ``.csv`` and ``.json`` (and removes the
    sweep files of an earlier call when this one has no sweep); returns the file names."""
    out = Path(out_dir)
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
            f"{name:22s} {format_cell(row['ce_example_f1']):>15s}"
            f" {format_cell(row['ce_example_no_nf_f1']):>15s}"
            f" {format_cell(row['ce_label_macro_f1']):>15s}"
            f" {format_cell(row['ce_example_avg']):>15s} {format_cell(row['BLEU_4']):>15s}"
            f" {format_cell(row['aux_auc_macro']):>15s} "
            f"{'–' if conflict is None else f'{conflict:.0%}':>9s} {format_number(collapse):>9s} "
            f"{format_number(noise, 4):>10s}"
        )
    constant = summary.get("constant_report")
    if constant is not None:
        metrics = constant["metrics"]
        lines.append(
            f"{'(one constant report)':22s} {format_number(metrics['ce_example_f1']):>15s} "
            f"{format_number(metrics.get('ce_example_no_nf_f1')):>15s} "
            f"{format_number(metrics['ce_label_macro_f1']):>15s} "
            f"{format_number(metrics['ce_example_avg']):>15s} "
            f"{format_number(metrics['BLEU_4']):>15s}"
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
                    f"{param}={format_value(r['value'])}: "
                    f"{format_number(r['ce_example_f1']['mean'])}"
                    for r in rows
                )
                lines.append(f"  {cells}")
    lines.append("noise tr = trace of the update-noise covariance, shared parameters.")
    return "\n".join(lines)
