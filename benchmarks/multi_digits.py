"""Multi-Digits: every method of the registry on a small real-data multi-task problem.

The data set is the MultiMNIST construction of Sener & Koltun (NeurIPS 2018) applied to the
1,797 8 × 8 handwritten digits that scikit-learn ships (``sklearn.datasets.load_digits``, no
download): two digits are overlaid (pixel-wise maximum) on a 14 × 14 canvas, one near the
top-left corner and one near the bottom-right corner, each shifted by up to 2 pixels, so that
they overlap by 2 to 6 of their 8 pixels in each direction. The tasks are the left digit (10
classes), the right digit (10 classes) and, with ``--tasks 3`` (the default), their sum (a
regression). Test images are built from digits that no training image uses.

A small CNN trunk is shared by one linear head per task. Every optax transformation of the
registry (``camegrad_jax.METHODS``) trains it, first in ``optax.chain(method, adam)``, with
the method's weights restricted to the trunk (``shared_mask``; the heads receive their own
task's gradient); rows whose update needs an input other than ``value=losses`` are skipped with
the reason printed. Each method runs several seeds (initialisation and batch order), the whole
training loop one ``lax.scan`` inside ``jit``, ``vmap``-ed over the seeds. The same network
trained on each task alone gives the single-task baselines. A method's own ``seed`` (RLW's)
is a static argument, so its draws are the same in every seed of the benchmark.

Reported per method: the test metrics (accuracy for the digits, mean absolute error of the
sum), Δm% against the single-task baselines as in the multi-task literature (Maninis et al.,
CVPR 2019; Liu et al., NeurIPS 2021),

    Δm = 100 / T · Σ_i (-1)^{l_i} (M_i - M_single,i) / M_single,i    (l_i = 1 where lower is
                                                                       better; higher Δm: better)

with its spread over seeds, the conflict ratio (the fraction of training steps at which two task
gradients on the shared trunk have a negative cosine), and the wall time.

    python benchmarks/multi_digits.py --quick                      # a smoke test, ~minutes
    python benchmarks/multi_digits.py --json benchmarks/results-multi-digits.json \\
        --markdown docs/results/multi-digits.md --figure docs/results/multi-digits.png
    python benchmarks/multi_digits.py --methods linear,camegrad,stch --seeds 3

``--digits-npz FILE`` reads the source digits from an ``.npz`` with ``images`` (N, 8, 8) and
``labels`` (N,) instead of scikit-learn (e.g. where scikit-learn is not installed).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import camegrad_jax as cg

DIGIT_SIZE = 8
NUM_CLASSES = 10
# Sum of two uniform digits: mean 9, standard deviation sqrt(2 · 99 / 12); the regression head
# predicts the standardised sum so that its loss starts on the classification losses' scale.
SUM_MEAN, SUM_STD = 9.0, float(np.sqrt(2 * 99 / 12))
ALL_TASKS = ("left", "right", "sum")
# Whether a lower value of the task's metric is better (l_i in Δm).
LOWER_IS_BETTER = {"left": False, "right": False, "sum": True}
METRIC_NAMES = {"left": "accuracy", "right": "accuracy", "sum": "MAE"}


# ---------------------------------------------------------------------------------------------
# Data


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MultiDigits:
    """Composite images and their labels: (N, S, S, 1) float32 in [0, 1]; (N, 3) int32 columns
    left digit, right digit, their sum."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_source_digits(npz: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 8 × 8 source digits in [0, 1] and their labels: scikit-learn's bundled copy, or the
    arrays ``images`` and ``labels`` of an ``.npz``."""
    if npz is not None:
        with np.load(npz) as data:
            images, labels = data["images"], data["labels"]
        return np.asarray(images, np.float32) / max(float(images.max()), 1e-12), labels
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise SystemExit(
            "Multi-Digits reads scikit-learn's bundled digits: `pip install scikit-learn`, or "
            "pass the digits as `--digits-npz FILE` (arrays `images` (N, 8, 8), `labels` (N,))."
        ) from error
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int32)


def make_multi_digits(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_train: int,
    num_test: int,
    seed: int,
    canvas: int = 14,
    max_shift: int = 2,
    test_fraction: float = 0.3,
) -> MultiDigits:
    """Overlays pairs of source digits into composites (deterministic in ``seed``).

    The source digits are split once into disjoint training and test pools (``test_fraction``
    of them for the test pool). Each composite draws two digits from its pool; the left one's
    corner lies at (r, c) with r, c uniform in [0, max_shift], the right one's at
    (canvas - 8 - r', canvas - 8 - c'), likewise; the composite is their pixel-wise maximum.
    """
    if images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE) or len(images) != len(labels):
        raise ValueError(
            f"`images` should have shape (N, 8, 8) and `labels` (N,). Found {images.shape} and "
            f"{np.shape(labels)}."
        )
    if canvas - DIGIT_SIZE - max_shift < 0:
        raise ValueError(
            f"`canvas` should be at least 8 + max_shift. Found `canvas = {canvas}`, "
            f"`max_shift = {max_shift}`."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    num_test_pool = int(round(test_fraction * len(images)))
    test_pool, train_pool = order[:num_test_pool], order[num_test_pool:]

    def composites(pool: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = rng.choice(pool, size=(count, 2))
        shifts = rng.integers(0, max_shift + 1, size=(count, 4))
        out = np.zeros((count, canvas, canvas), np.float32)
        far = canvas - DIGIT_SIZE
        for n, ((a, b), (r, c, r2, c2)) in enumerate(zip(pairs, shifts, strict=True)):
            out[n, r : r + DIGIT_SIZE, c : c + DIGIT_SIZE] = images[a]
            right = out[n, far - r2 : far - r2 + DIGIT_SIZE, far - c2 : far - c2 + DIGIT_SIZE]
            np.maximum(right, images[b], out=right)
        left_digit, right_digit = labels[pairs[:, 0]], labels[pairs[:, 1]]
        targets = np.stack([left_digit, right_digit, left_digit + right_digit], axis=1)
        return out[..., None], targets.astype(np.int32)

    train_images, train_labels = composites(train_pool, num_train)
    test_images, test_labels = composites(test_pool, num_test)
    return MultiDigits(train_images, train_labels, test_images, test_labels)


# ---------------------------------------------------------------------------------------------
# Model


class PatchConv(nn.Module):
    """A 3 × 3 convolution ("SAME" padding) written as patches times a dense kernel.

    The same function as ``nn.Conv``, but the patch extraction does not involve the weights, so
    that ``vmap`` over seeds (one kernel per seed) is a batched matrix product; a batched
    ``nn.Conv`` kernel becomes a grouped convolution, twice as slow to run and to compile on a
    CPU here.
    """

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        patches = jax.lax.conv_general_dilated_patches(
            x,
            (3, 3),
            (self.stride, self.stride),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return nn.Dense(self.features)(patches)


class Trunk(nn.Module):
    """The shared part: two 3 × 3 convolutions and a dense layer."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(PatchConv(8)(x))
        x = nn.relu(PatchConv(16, stride=2)(x))
        return nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))


class MultiDigitNet(nn.Module):
    """The shared trunk and one linear head per task (10 logits for a digit, 1 for the sum)."""

    tasks: tuple[str, ...]

    @nn.compact
    def __call__(self, x):
        features = Trunk(name="trunk")(x)
        return {
            task: nn.Dense(1 if task == "sum" else NUM_CLASSES, name=f"head_{task}")(features)
            for task in self.tasks
        }


def task_losses(outputs: dict, labels: jax.Array, tasks: Sequence[str]) -> jax.Array:
    """(K,) losses: cross-entropy for the digits, squared error of the standardised sum."""
    losses = []
    for task in tasks:
        column = labels[:, ALL_TASKS.index(task)]
        if task == "sum":
            target = (column.astype(jnp.float32) - SUM_MEAN) / SUM_STD
            losses.append(jnp.mean((outputs[task][:, 0] - target) ** 2))
        else:
            losses.append(
                optax.softmax_cross_entropy_with_integer_labels(outputs[task], column).mean()
            )
    return jnp.stack(losses)


def task_metrics(outputs: dict, labels: jax.Array, tasks: Sequence[str]) -> jax.Array:
    """(K,) test metrics: accuracy for the digits, mean absolute error of the sum."""
    metrics = []
    for task in tasks:
        column = labels[:, ALL_TASKS.index(task)]
        if task == "sum":
            prediction = outputs[task][:, 0] * SUM_STD + SUM_MEAN
            metrics.append(jnp.mean(jnp.abs(prediction - column)))
        else:
            metrics.append(jnp.mean(jnp.argmax(outputs[task], axis=-1) == column))
    return jnp.stack(metrics)


# ---------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 2e-3
    seeds: int = 5
    tasks: tuple[str, ...] = ALL_TASKS


@dataclasses.dataclass(frozen=True)
class RunOutput:
    """What a training run returns, one entry per seed."""

    metrics: np.ndarray  # (S, K) test metrics
    conflict_ratio: np.ndarray  # (S,) fraction of steps with a negative trunk cosine
    final_losses: np.ndarray  # (S, K) mean training losses over the last 10% of the steps
    vectorised: bool  # whether the seeds ran under one vmap


def shared_trunk_mask(params: Any) -> Any:
    """True on the trunk's leaves, False on the heads'."""
    return {name: jax.tree.map(lambda _: name == "trunk", sub) for name, sub in params.items()}


def _negative_cosine(task_grads: Any) -> jax.Array:
    """Whether two task gradients on the trunk point against each other (a K × K Gram test)."""
    rows = jnp.concatenate(
        [leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(task_grads["trunk"])], axis=1
    )
    gram = rows @ rows.T
    return jnp.any(gram < 0)


def make_run(
    config: TrainConfig,
    tx_for: Callable[[Any], optax.GradientTransformation],
    *,
    needs_values: bool,
) -> Callable[[jax.Array, MultiDigits], tuple[jax.Array, jax.Array, jax.Array]]:
    """One training run as a pure function of a PRNG key and the data: the whole loop is one
    ``lax.scan``. The data are arguments, not constants captured in the compiled program (XLA
    would spend its compile time folding them).

    ``tx_for(params)`` builds the multi-task transformation (it may read the parameter tree,
    e.g. for the trunk mask). Returns ``(test metrics (K,), conflict flags (steps,), training
    losses (steps, K))``.
    """
    tasks = config.tasks
    model = MultiDigitNet(tasks)

    def loss_vector(params, x, y):
        return task_losses(model.apply({"params": params}, x), y, tasks)

    def run(key, data: MultiDigits):
        init_key, batch_key = jax.random.split(key)
        params = model.init(init_key, data.train_images[:1])["params"]
        tx = optax.chain(tx_for(params), optax.adam(config.learning_rate))
        opt_state = tx.init(params)
        num_train = data.train_images.shape[0]

        def step(carry, step_key):
            params, opt_state = carry
            index = jax.random.randint(step_key, (config.batch_size,), 0, num_train)
            x, y = data.train_images[index], data.train_labels[index]
            losses, grads = cg.task_gradients(loss_vector, params, x, y)
            extra = {"value": losses} if needs_values else {}
            updates, opt_state = tx.update(grads, opt_state, params, **extra)
            conflict = _negative_cosine(grads) if len(tasks) > 1 else jnp.asarray(False)
            return (optax.apply_updates(params, updates), opt_state), (conflict, losses)

        keys = jax.random.split(batch_key, config.steps)
        (params, _), (conflicts, losses) = jax.lax.scan(step, (params, opt_state), keys)
        outputs = model.apply({"params": params}, data.test_images)
        return task_metrics(outputs, data.test_labels, tasks), conflicts, losses

    return run


def run_seeds(run: Callable, data: MultiDigits, seeds: int) -> RunOutput:
    """All seeds under one ``vmap`` where the method allows it, else one compiled run each."""
    keys = jax.random.split(jax.random.key(0), seeds)
    arrays = jax.tree.map(jnp.asarray, data)
    try:
        metrics, conflicts, losses = jax.jit(jax.vmap(run, in_axes=(0, None)))(keys, arrays)
        vectorised = True
    except Exception as error:  # a method whose update cannot be batched
        print(f"    vmap over seeds failed ({type(error).__name__}); one run per seed")
        compiled = jax.jit(run)
        outputs = [compiled(key, arrays) for key in keys]
        metrics, conflicts, losses = (jnp.stack(x) for x in zip(*outputs, strict=True))
        vectorised = False
    tail = max(1, losses.shape[1] // 10)
    return RunOutput(
        metrics=np.asarray(metrics, np.float64),
        conflict_ratio=np.asarray(conflicts, np.float64).mean(axis=1),
        final_losses=np.asarray(losses[:, -tail:], np.float64).mean(axis=1),
        vectorised=vectorised,
    )


# ---------------------------------------------------------------------------------------------
# Methods


def build_method(info: cg.MethodInfo, params: Any, num_tasks: int, epoch_length: int):
    """The row's transformation for this problem: K known (the scan's carry keeps its shape),
    the trunk as the shared leaves, and an epoch of ``epoch_length`` steps where the method
    counts epochs (DWA)."""
    accepted = inspect.signature(info.factory).parameters
    kwargs = dict(info.example_kwargs)
    if "epoch_length" in accepted:
        kwargs["epoch_length"] = epoch_length
    if "shared_mask" in accepted:
        kwargs["shared_mask"] = shared_trunk_mask(params)
    if "num_tasks" in accepted:
        kwargs["num_tasks"] = num_tasks
    return info.build(**kwargs)


def select_methods(names: Sequence[str] | None) -> tuple[list, list[tuple[str, str]]]:
    """The registry rows to train, and (name, reason) for those skipped."""
    chosen, skipped = [], []
    for info in cg.METHODS:
        if names is not None and info.name not in names:
            continue
        if not info.is_transformation:
            skipped.append((info.name, f"kind {info.kind!r} is a training step, not a transform"))
        elif set(info.inputs) - {"value"}:
            missing = ", ".join(sorted(set(info.inputs) - {"value"}))
            skipped.append((info.name, f"its update needs {missing}, which this model lacks"))
        else:
            chosen.append(info)
    if names is not None:
        unknown = sorted(set(names) - {info.name for info in cg.METHODS})
        if unknown:
            raise SystemExit(
                f"Unknown methods {unknown}; registered: {[info.name for info in cg.METHODS]}"
            )
    return chosen, skipped


# ---------------------------------------------------------------------------------------------
# Results


def delta_m(metrics: np.ndarray, baseline: np.ndarray, tasks: Sequence[str]) -> np.ndarray:
    """Δm% of each row of ``metrics`` (..., K) against the single-task ``baseline`` (K,)."""
    signs = np.array([-1.0 if LOWER_IS_BETTER[t] else 1.0 for t in tasks])
    return 100.0 * np.mean(signs * (metrics - baseline) / baseline, axis=-1)


@dataclasses.dataclass(frozen=True)
class MethodResult:
    name: str
    kind: str
    metrics_mean: dict[str, float]
    metrics_std: dict[str, float]
    delta_m_mean: float
    delta_m_std: float
    conflict_ratio: float
    seconds: float
    vectorised: bool


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    config: dict[str, Any]
    baseline_mean: dict[str, float]
    baseline_std: dict[str, float]
    methods: list[MethodResult]
    skipped: list[tuple[str, str]]
    wall_seconds: float


def markdown(result: BenchmarkResult) -> str:
    tasks = result.config["tasks"]
    header = ["method", "kind"] + [f"{t} {METRIC_NAMES[t]}" for t in tasks]
    header += ["Δm% (↑)", "conflict ratio", "time (s)"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| single-task | – | "
        + " | ".join(f"{result.baseline_mean[t]:.4f} ± {result.baseline_std[t]:.4f}" for t in tasks)
        + " | 0 | – | – |",
    ]
    for m in sorted(result.methods, key=lambda m: -m.delta_m_mean):
        cells = [f"`{m.name}`", m.kind]
        cells += [f"{m.metrics_mean[t]:.4f} ± {m.metrics_std[t]:.4f}" for t in tasks]
        cells += [
            f"{m.delta_m_mean:+.2f} ± {m.delta_m_std:.2f}",
            f"{m.conflict_ratio:.2f}",
            f"{m.seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    config = result.config
    notes = [
        "",
        f"{config['seeds']} seeds (mean ± standard deviation over seeds), {config['steps']} "
        f"Adam steps (learning rate {config['learning_rate']}, batch {config['batch_size']}), "
        f"{config['num_train']} training and {config['num_test']} test composites of "
        f"{config['digits']} source digits. Δm% is against the single-task networks' mean; the "
        "conflict ratio is the fraction of steps at which two task gradients on the shared "
        f"trunk have a negative cosine. Total wall time {result.wall_seconds:.0f} s.",
    ]
    if result.skipped:
        notes.append("")
        notes += [f"Skipped `{name}`: {reason}." for name, reason in result.skipped]
    return "\n".join(lines + notes) + "\n"


def figure(result: BenchmarkResult, path: str | Path) -> bool:
    """Δm% (with its spread over seeds) and the conflict ratio of each method; False where
    matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
        return False
    methods = sorted(result.methods, key=lambda m: m.delta_m_mean)
    names = [m.name for m in methods]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.32 * len(names) + 1.5), sharey=True)
    left.barh(names, [m.delta_m_mean for m in methods], xerr=[m.delta_m_std for m in methods])
    left.axvline(0.0, color="black", linewidth=0.8)
    left.set_xlabel("Δm% against single-task networks (higher is better)")
    right.barh(names, [m.conflict_ratio for m in methods], color="tab:orange")
    right.set_xlabel("conflict ratio (steps with a negative trunk cosine)")
    fig.suptitle(f"Multi-Digits, {result.config['seeds']} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 1000)")
    parser.add_argument("--tasks", type=int, choices=(2, 3), default=3)
    parser.add_argument("--methods", default=None, help="comma-separated registry names")
    parser.add_argument("--digits-npz", default=None, help="source digits instead of sklearn")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--figure", default=None, help="write the figure here (PNG)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> BenchmarkResult:
    args = parse_args(argv)
    start = time.perf_counter()
    tasks = ALL_TASKS[: args.tasks]
    config = TrainConfig(
        steps=args.steps or (40 if args.quick else TrainConfig.steps),
        seeds=args.seeds or (2 if args.quick else TrainConfig.seeds),
        tasks=tasks,
    )
    num_train, num_test = (256, 128) if args.quick else (4000, 2000)
    images, labels = load_source_digits(args.digits_npz)
    data = make_multi_digits(images, labels, num_train=num_train, num_test=num_test, seed=0)
    epoch_length = max(1, num_train // config.batch_size)
    names = None if args.methods is None else [n.strip() for n in args.methods.split(",")]
    methods, skipped = select_methods(names)
    for name, reason in skipped:
        print(f"skip {name}: {reason}")

    print(f"single-task baselines ({config.seeds} seeds, {config.steps} steps)")
    baseline_runs = []
    for task in tasks:
        single = dataclasses.replace(config, tasks=(task,))
        run = make_run(
            single, lambda params: cg.linear_scalarization(num_tasks=1), needs_values=False
        )
        baseline_runs.append(run_seeds(run, data, config.seeds).metrics[:, 0])
    baseline = np.stack(baseline_runs, axis=1)  # (S, K)
    baseline_mean = baseline.mean(axis=0)

    results = []
    for info in methods:
        method_start = time.perf_counter()
        print(f"{info.name} ...", flush=True)
        run = make_run(
            config,
            lambda params, info=info: build_method(info, params, len(tasks), epoch_length),
            needs_values=info.needs_values,
        )
        output = run_seeds(run, data, config.seeds)
        scores = delta_m(output.metrics, baseline_mean, tasks)
        seconds = time.perf_counter() - method_start
        results.append(
            MethodResult(
                name=info.name,
                kind=info.kind,
                metrics_mean=dict(zip(tasks, output.metrics.mean(axis=0).tolist(), strict=True)),
                metrics_std=dict(zip(tasks, output.metrics.std(axis=0).tolist(), strict=True)),
                delta_m_mean=float(np.mean(scores)),
                delta_m_std=float(np.std(scores)),
                conflict_ratio=float(np.mean(output.conflict_ratio)),
                seconds=seconds,
                vectorised=output.vectorised,
            )
        )
        print(
            f"    Δm {np.mean(scores):+.2f}%  metrics {np.round(output.metrics.mean(0), 4)}  "
            f"conflict {np.mean(output.conflict_ratio):.2f}  {seconds:.0f} s",
            flush=True,
        )

    result = BenchmarkResult(
        config={
            **dataclasses.asdict(config),
            "num_train": num_train,
            "num_test": num_test,
            "digits": len(images),
            "quick": args.quick,
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
        baseline_mean=dict(zip(tasks, baseline_mean.tolist(), strict=True)),
        baseline_std=dict(zip(tasks, baseline.std(axis=0).tolist(), strict=True)),
        methods=results,
        skipped=skipped,
        wall_seconds=time.perf_counter() - start,
    )
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("# Multi-Digits results\n\n" + table)
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        figure(result, args.figure)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
