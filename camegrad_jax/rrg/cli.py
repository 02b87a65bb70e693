"""``camegrad-rrg``: train, evaluate and make data for the reference report-generation setup.

    camegrad-rrg train [--optimizer camegrad] [--epochs 12] [--save-dir runs/rrg] ...
    camegrad-rrg train --ann-path data/iu_xray/annotation.json --image-dir data/iu_xray/images \\
        --dataset-name iu_xray --optimizer linear --save-dir runs/iu_linear
    camegrad-rrg train --resume --save-dir runs/rrg
    camegrad-rrg evaluate runs/rrg [--split test] [--checkpoint best]
    camegrad-rrg make-synthetic data/synthetic [--num-train 1000] [--force]
    camegrad-rrg compare --quick --select-by ce_example_no_nf_f1 --out runs/demo   # the demo
    camegrad-rrg compare --methods all --seeds 0,1,2 [--sweep] --out runs/compare

Without ``--ann-path``, ``train`` uses the embedded synthetic data set. Each subcommand is one
``_Command`` (a parser builder and a runner) in ``COMMANDS``; adding a subcommand is one more.
A user's mistake (bad flag value, malformed data, a folder that cannot be written, data that are
not a run's own) ends the command with one line and exit status 2; a diverged run with status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from camegrad_jax.rrg.aux_tasks import AUX_TASKS
from camegrad_jax.rrg.compare import run_comparison
from camegrad_jax.rrg.compare_plan import (
    DEFAULT_SWEEP,
    QUICK_FIELDS,
    QUICK_METHODS,
    QUICK_NOISE_BATCHES,
    QUICK_SEEDS,
    CompareConfig,
)
from camegrad_jax.rrg.compare_tables import format_summary
from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.optim import available_methods
from camegrad_jax.rrg.restore import evaluate_run, saved_config
from camegrad_jax.rrg.results import RunResults
from camegrad_jax.rrg.rundir import check_writable, persistent_compilation_cache
from camegrad_jax.rrg.synthetic import SyntheticConfig, write_r2gen_layout
from camegrad_jax.rrg.train import TrainingDiverged, train

__all__ = ["COMMANDS", "build_parser", "main"]

# Training flags: (flag, TrainConfig field, argparse keywords, help). Defaults come from
# TrainConfig; a flag that is not given leaves the field alone (or, with --resume, as saved).
_Flag = tuple[str, str, dict[str, Any], str]


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from error


def _optional_float(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from error


def _key_value(text: str) -> tuple[str, Any]:
    """A ``--method-option KEY=VALUE``: the value read as JSON where it parses, else as text.

    Examples:
      >>> _key_value("solver_maxiter=50"), _key_value("solver=apg")
      (('solver_maxiter', 50), ('solver', 'apg'))
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _train_flags() -> list[_Flag]:
    flag = argparse.BooleanOptionalAction
    return [
        # Data.
        ("--ann-path", "ann_path", {}, "R2Gen annotation.json; without it, synthetic data"),
        ("--image-dir", "image_dir", {}, "image folder (default: images/ beside --ann-path)"),
        ("--dataset-name", "dataset_name", {"choices": ("iu_xray", "mimic_cxr")}, "data set"),
        ("--vocab-threshold", "vocab_threshold", {"type": int}, "vocabulary frequency threshold"),
        ("--synthetic-train-size", "synthetic_train_size", {"type": int}, "synthetic train"),
        ("--synthetic-val-size", "synthetic_val_size", {"type": int}, "synthetic val studies"),
        ("--synthetic-test-size", "synthetic_test_size", {"type": int}, "synthetic test"),
        ("--synthetic-seed", "synthetic_seed", {"type": int}, "seed of the synthetic data"),
        ("--synthetic-views", "synthetic_num_views", {"type": int, "choices": (1, 2)}, "views"),
        (
            "--synthetic-generator",
            "synthetic_generator",
            {"choices": ("v1", "v2")},
            "synthetic data: v2 realistic (default), v1 the data of the v1 results",
        ),
        ("--image-size", "image_size", {"type": int}, "square image side"),
        ("--max-len", "max_len", {"type": int}, "tokens per report, BOS/EOS included"),
        # Model.
        ("--conv-features", "conv_features", {"type": _int_tuple}, "conv widths, e.g. 16,32"),
        ("--norm-groups", "norm_groups", {"type": int}, "GroupNorm groups"),
        ("--d-model", "d_model", {"type": int}, "transformer width"),
        ("--num-heads", "num_heads", {"type": int}, "attention heads"),
        ("--d-ff", "d_ff", {"type": int}, "feed-forward width"),
        ("--num-encoder-layers", "num_encoder_layers", {"type": int}, "encoder layers"),
        ("--num-decoder-layers", "num_decoder_layers", {"type": int}, "decoder layers"),
        ("--dropout", "dropout", {"type": float}, "dropout rate"),
        (
            "--aux",
            "aux",
            {"choices": AUX_TASKS},
            "auxiliary task beside report generation (docs/auxiliary-tasks.md)",
        ),
        (
            "--alignment-weak",
            "alignment_weak",
            {"action": flag},
            "with --aux alignment: studies with equal labels are positives (WCL)",
        ),
        # Optimisation.
        ("--optimizer", "optimizer", {"choices": available_methods()}, "multi-task method"),
        ("--c", "c", {"type": float}, "CAME-Grad/CAGrad trust-region radius c"),
        ("--gamma", "gamma", {"type": float}, "CAME-Grad Stage 2 gain gamma"),
        ("--alpha", "alpha", {"type": float}, "CAME-Grad Stage 3 fusion alpha"),
        ("--cls-weight", "cls_weight", {"type": float}, "weight of the classification loss"),
        ("--epochs", "epochs", {"type": int}, "training epochs"),
        ("--batch-size", "batch_size", {"type": int}, "training batch size"),
        ("--seed", "seed", {"type": int}, "seed of init, batch order and dropout"),
        ("--lr", "learning_rate", {"type": float}, "peak learning rate"),
        ("--warmup-fraction", "warmup_fraction", {"type": float}, "share of warm-up steps"),
        ("--final-lr-fraction", "final_lr_fraction", {"type": float}, "final lr / peak"),
        ("--weight-decay", "weight_decay", {"type": float}, "AdamW decay (matrices only)"),
        (
            "--baseline-clip",
            "baseline_clip",
            {"type": _optional_float},
            "element-wise clip of the linear baseline ('none' for no clip)",
        ),
        # Evaluation and logging.
        ("--beam-size", "beam_size", {"type": int}, "1: greedy decoding; more: beam search"),
        ("--eval-batch-size", "eval_batch_size", {"type": int}, "decoding batch size"),
        ("--eval-every", "eval_every", {"type": int}, "validate every N epochs"),
        (
            "--select-by",
            "selection_metric",
            {"type": str},
            "val metric of the best checkpoint (default ce_example_f1)",
        ),
        ("--meteor-val", "meteor_val", {"action": flag}, "METEOR on val (Java, ~15 s a call)"),
        ("--meteor-test", "meteor_test", {"action": flag}, "METEOR on the final test"),
        ("--log-every", "log_every", {"type": int}, "steps between diagnostics fetches"),
    ]


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--save-dir", default=defaults.save_dir, help="run directory (%(default)s)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --save-dir from its latest checkpoint (its saved config "
        "is kept; flags given must agree with it)",
    )
    parser.add_argument(
        "--stop-after-epoch",
        type=int,
        metavar="N",
        help="stop once N epochs are done (continue later with --resume)",
    )
    parser.add_argument(
        "--method-option",
        action="append",
        type=_key_value,
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        dest="method_options",
        help="further keyword argument of the multi-task method (value read as JSON)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help="JAX persistent compilation cache: later runs of the same shapes start faster",
    )
    _add_config_flags(parser, defaults)


def _add_config_flags(
    parser: argparse.ArgumentParser, defaults: Any, exclude: Sequence[str] = ()
) -> None:
    """One flag per `TrainConfig` field (but ``exclude``); a flag not given leaves no attribute,
    so only the fields a user set reach the config (see `_given_config_fields`)."""
    for flag, field, keywords, text in _train_flags():
        if field in exclude:
            continue
        default = getattr(defaults, field)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            flag,
            dest=field,
            default=argparse.SUPPRESS,
            help=f"{text} (default: {shown})",
            **keywords,
        )


def _given_config_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {field for _, field, _, _ in _train_flags()}
    given = {field: getattr(args, field) for field in fields if hasattr(args, field)}
    if hasattr(args, "method_options"):
        given["method_options"] = dict(args.method_options)
    return given


def _print_summary(results: RunResults, save_dir: str) -> None:
    selection = results.selection
    print(f"results: {Path(save_dir) / 'results.json'}")
    if results.test is None:
        print(f"stopped after epoch {results.epochs[-1].epoch}; continue with --resume")
        return
    print(f"best epoch {selection.epoch} (val {selection.metric} {selection.value:.4f})")
    print("test metrics of the best checkpoint:")
    print(_format_metrics(results.test))
    diagnostics = results.diagnostics
    if "cosine_similarity" in diagnostics:
        print(
            f"gradient cosine mean {diagnostics['cosine_similarity']['mean']:.3f}, "
            f"steps in conflict {diagnostics['conflict']['mean']:.1%}, "
            f"collapse ratio mean {diagnostics['magnitude_collapse_ratio']['mean']:.3f}"
        )
    timing = results.timing
    print(f"wall time {timing.wall_seconds:.0f} s, peak memory {timing.peak_rss_mb:.0f} MB")


def _format_metrics(metrics: dict[str, Any]) -> str:
    lines = []
    for name, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:28s} {shown}")
    return "\n".join(lines)


def _run_train(args: argparse.Namespace) -> int:
    with persistent_compilation_cache(args.compilation_cache):
        return _train_command(args)


def _train_command(args: argparse.Namespace) -> int:
    given = _given_config_fields(args)
    if args.resume:
        config = saved_config(args.save_dir).replace(**given, save_dir=args.save_dir)
    else:
        config = TrainConfig(**given, save_dir=args.save_dir)
    results = train(
        config,
        resume=args.resume,
        progress=not args.no_progress,
        stop_after_epoch=args.stop_after_epoch,
    )
    _print_summary(results, config.save_dir)
    return 0


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory written by `train` (its --save-dir)")
    parser.add_argument(
        "--split", choices=("test", "val"), default="test", help="split (default: %(default)s)"
    )
    parser.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="best (by val CE F1) or latest (default: %(default)s)",
    )
    parser.add_argument("--beam-size", type=int, help="default: the run's")
    parser.add_argument(
        "--meteor",
        action=argparse.BooleanOptionalAction,
        help="compute METEOR (default: the run's setting for the split)",
    )
    parser.add_argument("--ann-path", help="the run's annotation.json, if it moved")
    parser.add_argument("--image-dir", help="the run's image folder, if it moved")
    parser.add_argument("--output", help="also write the metrics JSON to this file")


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.output:
        check_writable(Path(args.output).absolute().parent, "folder of --output")

    result = evaluate_run(
        args.run_dir,
        split=args.split,
        kind=args.checkpoint,
        beam_size=args.beam_size,
        meteor=args.meteor,
        ann_path=args.ann_path,
        image_dir=args.image_dir,
    )
    text = json.dumps(result, indent=1)
    print(text, flush=True)  # First: the metrics are not lost if the file cannot be written.
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


def _add_make_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig().synthetic_config()  # the data of a default `train` run
    parser.add_argument("out_dir", help="folder for annotation.json and images/")
    parser.add_argument(
        "--num-train", type=int, default=defaults.num_train, help="train studies (%(default)s)"
    )
    parser.add_argument(
        "--num-val", type=int, default=defaults.num_val, help="val studies (%(default)s)"
    )
    parser.add_argument(
        "--num-test", type=int, default=defaults.num_test, help="test studies (%(default)s)"
    )
    parser.add_argument(
        "--image-size", type=int, default=defaults.image_size, help="image side (%(default)s)"
    )
    parser.add_argument(
        "--num-views",
        type=int,
        choices=(1, 2),
        default=defaults.num_views,
        help="2: IU X-Ray layout, 1: MIMIC-CXR layout (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="data seed (%(default)s)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that already holds annotation.json or images (files of the "
        "same names are replaced)",
    )
    parser.add_argument(
        "--generator",
        choices=("v1", "v2"),
        default=defaults.generator,
        help="v2: realistic data; v1: the data of the v1 results (%(default)s)",
    )


def _refuse_to_overwrite(out_dir: Path) -> None:
    """Raise FileExistsError naming the first file of a data set already in ``out_dir``."""
    existing = out_dir / "annotation.json"
    if not existing.exists():
        images = out_dir / "images"
        existing = next((path for path in images.rglob("*") if path.is_file()), None)
    if existing is not None:
        raise FileExistsError(
            f"{existing} already exists; pass --force to overwrite the data set in {out_dir}, "
            "or choose another folder."
        )


def _run_make_synthetic(args: argparse.Namespace) -> int:
    if not args.force:
        _refuse_to_overwrite(Path(args.out_dir))

    config = SyntheticConfig(
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        image_size=args.image_size,
        num_views=args.num_views,
        generator=args.generator,
    )
    check_writable(args.out_dir, "output folder")
    ann_path = write_r2gen_layout(config, args.out_dir)
    print(
        f"wrote {ann_path} ({config.dataset_name} layout, images in {ann_path.parent / 'images'})"
    )
    print(
        f"train on it: camegrad-rrg train --ann-path {ann_path} "
        f"--dataset-name {config.dataset_name} --image-size {config.image_size}"
    )
    return 0


# Train flags that `compare` sets per run rather than once for all.
_PER_RUN_FIELDS = ("optimizer", "seed")


def _csv(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}"
            ) from error

    return parse


def _method_list(text: str) -> tuple[str, ...] | None:
    if text == "all":
        return None
    if text == "none":
        return ()
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in available_methods()]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown methods {unknown}; choose from {', '.join(available_methods())} or 'all'"
        )
    return names


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    quick = ", ".join(f"{k}={v}" for k, v in QUICK_FIELDS.items())
    parser.add_argument("--out", default="runs/compare", help="output folder (%(default)s)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the demo: {' vs '.join(QUICK_METHODS)}, seeds {list(QUICK_SEEDS)}, {quick} "
        "(flags given explicitly override these)",
    )
    parser.add_argument(
        "--methods",
        type=_method_list,
        default=argparse.SUPPRESS,
        help="comma-separated multi-task methods, or 'all' (default: all)",
    )
    parser.add_argument(
        "--seeds", type=_csv(int), default=argparse.SUPPRESS, help="training seeds (default 0,1,2)"
    )
    parser.add_argument("--sweep", action="store_true", help="also run the α/γ/c sweep")
    for name, values in DEFAULT_SWEEP.items():
        parser.add_argument(
            f"--sweep-{name}",
            type=_csv(float),
            default=values,
            metavar="VALUES",
            help=f"sweep values of {name} (default: {','.join(map(str, values))})",
        )
    parser.add_argument(
        "--noise-methods",
        type=_method_list,
        default=argparse.SUPPRESS,
        help="methods whose update-noise trace is measured, or 'none' (default: linear and "
        "the CAME-Grad family among --methods)",
    )
    parser.add_argument(
        "--noise-batches",
        type=int,
        default=argparse.SUPPRESS,
        help=f"minibatches per noise trace (default 32; --quick {QUICK_NOISE_BATCHES})",
    )
    parser.add_argument(
        "--bootstrap-resamples", type=int, default=10_000, help="resamples (%(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help="JAX persistent compilation cache (default: OUT/.jax_cache; 'none' for none)",
    )
    _add_config_flags(parser, TrainConfig(), exclude=_PER_RUN_FIELDS)


def _run_compare(args: argparse.Namespace) -> int:
    cache = args.compilation_cache or str(Path(args.out) / ".jax_cache")
    with persistent_compilation_cache(None if cache.lower() == "none" else cache):
        return _compare_command(args)


def _compare_command(args: argparse.Namespace) -> int:
    fields = {**(QUICK_FIELDS if args.quick else {}), **_given_config_fields(args)}
    options: dict[str, Any] = {}
    if args.quick:
        options.update(methods=QUICK_METHODS, seeds=QUICK_SEEDS, noise_batches=QUICK_NOISE_BATCHES)
    for name in ("methods", "seeds", "noise_methods", "noise_batches"):
        if hasattr(args, name):
            options[name] = getattr(args, name)
    config = CompareConfig(
        out_dir=args.out,
        base=TrainConfig(**fields),
        sweep=args.sweep,
        sweep_grid={"alpha": args.sweep_alpha, "gamma": args.sweep_gamma, "c": args.sweep_c},
        bootstrap_resamples=args.bootstrap_resamples,
        **options,
    )
    summary = run_comparison(config, progress=not args.no_progress)
    print(format_summary(summary))
    out = Path(args.out)
    print(f"tables, figures and summary.json in {out}: {', '.join(summary['files'])}")
    print(f"wall time {summary['timing']['wall_seconds']:.0f} s")
    return 0


@dataclasses.dataclass(frozen=True)
class _Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[_Command] = [
    _Command(
        "train",
        "train the reference model with a multi-task method (synthetic data by default)",
        _add_train_arguments,
        _run_train,
    ),
    _Command(
        "evaluate",
        "metrics of a run's checkpoint on test (or val)",
        _add_evaluate_arguments,
        _run_evaluate,
    ),
    _Command(
        "compare",
        "train several methods on the same data and seeds: the paper's tables, paired "
        "comparison against linear scalarization, gradient-dynamics figures, optional sweep",
        _add_compare_arguments,
        _run_compare,
    ),
    _Command(
        "make-synthetic",
        "write the synthetic data set in R2Gen's annotation.json layout",
        _add_make_synthetic_arguments,
        _run_make_synthetic,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camegrad-rrg",
        description="Radiology report generation with multi-task gradient methods "
        "(CAME-Grad and baselines) on a small Flax model.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        # Bad configurations, data files, run directories and unwritable folders (OSError
        # covers the missing, existing and unwritable ones): the message says what to fix.
        parser.exit(2, f"camegrad-rrg {args.command}: error: {error}\n")
    except TrainingDiverged as error:
        parser.exit(1, f"camegrad-rrg {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
