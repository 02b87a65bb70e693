"""What the multi-task transformations cost, as ratios measured side by side in one run.

Sections (``--sections``, comma-separated; default all but ``full_run`` and ``solvers``):

* ``dual``: the jitted Stage-1 dual (jaxopt and jaxopt-free solvers, exact polish) against
  SciPy's SLSQP — the reference CAGrad code's solver — on the same trace-normalised Gram
  matrices, with the objective each reaches; with ``--cvxpy`` also against a cone program
  (cvxpy + Clarabel, what torchjd uses).
* ``flat``: one ``camegrad`` update against one ``linear_scalarization`` update and against one
  bare pass over the stacked gradients, on a flat parameter vector, P ∈ {1e6, 1e7, 5e7} and
  K ∈ {2, 4, 8}, with XLA's compiled peak-memory figure for each.
* ``gram``: each way of reducing the stacked gradients to the Gram matrix that the library
  chooses between (fused multiply-reduce, the two-row form for K = 2, the chunk walk), a plain
  matrix product and one pass over the data, alone, against the linear update; what the
  choice in ``camegrad_jax/_tree.py`` rests on.
* ``pytree``: the same on the reference report-generation model's parameter pytree (128 leaves,
  1.3M parameters) and on a wider version of it (≈ 1e7 parameters).
* ``family``: every gradient-based method of the library against ``linear_scalarization``.
* ``torchjd``: torchjd's CAGrad aggregation against torchjd's plain sum (PyTorch, CPU), run by
  an interpreter that has torch and torchjd (``--torch-python``, default ``.venv-torch``).
  Each library is compared with its own plain sum over tasks.
* ``train``: one jitted train step of the reference model with ``camegrad`` against one with
  the ``linear`` baseline (K = 2), and the Gram-only mode (G from the last shared conv block)
  against both.
* ``solvers``: the ``camegrad`` update with the iterative dual (``solver="jaxopt"``) and with
  the loop-free one (``solver="enumerate"``) against the linear update, flat P ∈ {1e6, 1e7,
  1e8}, K ∈ {2, 4, 8}: what an accelerator, where a while loop may sync with the host at each
  iteration, is to measure (``benchmarks/gpu_checks.sh``).
* ``lowmem``: the exact low-memory route (:func:`camegrad_jax.task_gram`, one task at a time,
  then one weighted backward pass: ``gram_only_gradients(low_memory=True)``) against the stacked
  route (``task_gradients`` then the update), a whole camegrad gradient step from the losses, on
  MLPs of a shared trunk and K linear heads: time and XLA's compiled peak memory over
  K ∈ {2, 4, 8} and P from 1e5 to the reference model's 1.3M and 1e7, and the peak memory alone
  (compiled, not run) at P ≈ 1e8.
* ``full_run``: a default ``camegrad-rrg train`` run in a child process: wall time and peak RSS.

Timing: contenders run interleaved (A, B, A, B, …) and each ratio is the median of the
per-round ratios, so load on this shared machine hits both sides alike; absolute times are given
only for context. ``--rounds`` is the least number of rounds: small programs get more (up to
200, about 2e8 gradient entries read per contender), since their short times are the noisiest.
The stacked-gradient updates are timed in steady state (the dual warm-started from the previous
step's solution, as in training).

    python benchmarks/run_benchmarks.py                    # everything (tens of minutes)
    python benchmarks/run_benchmarks.py --quick            # tiny sizes: a smoke test
    python benchmarks/run_benchmarks.py --sections flat,train --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import camegrad_jax as cg

ROOT = Path(__file__).resolve().parent.parent


def interleaved_times(
    contenders: dict[str, Callable[[], object]], rounds: int, shuffle_seed: int | None = None
) -> dict[str, np.ndarray]:
    """Each contender's times over `rounds` interleaved rounds (all run once per round, after one
    warm-up call each), in the given order or, with `shuffle_seed`, in a new order every round:
    whichever program runs just before another decides what is left in the caches for it."""
    for fn in contenders.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
    for _ in range(rounds):
        if rng is not None:
            rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            jax.block_until_ready(contenders[name]())
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def paired_ratio(numerator: Callable[[], object], denominator: Callable[[], object], rounds: int):
    """Median over interleaved rounds of time(numerator) / time(denominator), with the medians
    of each side's times in milliseconds."""
    times = interleaved_times({"numerator": numerator, "denominator": denominator}, rounds)
    return {
        "ratio": float(np.median(times["numerator"] / times["denominator"])),
        "numerator_ms": 1e3 * float(np.median(times["numerator"])),
        "denominator_ms": 1e3 * float(np.median(times["denominator"])),
    }


def mean_seconds(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats


def peak_bytes(fn: Callable, *args) -> int:
    """XLA's compiled memory figure: arguments + outputs + temporaries."""
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes + stats.argument_size_in_bytes)


# ------------------------------------------------------------------------------------------------
# dual: Stage 1's K × K problem against SciPy SLSQP (and a cone program).
# ------------------------------------------------------------------------------------------------


def random_normalised_gram(rng: np.random.Generator, num_tasks: int) -> np.ndarray:
    shared = rng.normal(size=256)
    h = rng.normal(size=(num_tasks, 256)) + rng.uniform(-0.5, 1.0) * shared
    h *= np.exp(rng.uniform(-1.5, 1.5, size=(num_tasks, 1)))
    gram = h @ h.T
    return gram / np.trace(gram)


def slsqp_solve(gram: np.ndarray, radius: float) -> np.ndarray:
    """The reference CAGrad code's solve: SLSQP from uniform weights, default tolerances."""
    from scipy.optimize import minimize

    k = gram.shape[0]
    centre = gram.mean(axis=1)

    def objective(w):
        return w @ centre + radius * np.sqrt(max(w @ gram @ w, 0.0) + 1e-8)

    return minimize(
        objective,
        np.full(k, 1.0 / k),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints={"type": "eq", "fun": lambda w: np.sum(w) - 1.0},
    ).x


def dual_objective(w, gram, radius) -> float:
    return float(w @ gram.mean(axis=1) + radius * np.sqrt(max(w @ gram @ w, 0.0)))


def bench_dual(task_counts: Sequence[int], problems: int, with_cvxpy: bool) -> list[dict]:
    """Our solve inside one jitted program (as in a train step; amortised over a batch of
    problems with lax.map) and as one jitted call per problem (dispatch included)."""
    rows = []
    rng = np.random.default_rng(0)
    for k in task_counts:
        grams = [random_normalised_gram(rng, k) for _ in range(problems)]
        radii = [0.5 * np.sqrt(np.mean(g)) for g in grams]
        gram_batch = jnp.asarray(np.stack(grams), jnp.float32)
        radius_batch = jnp.asarray(np.array(radii), jnp.float32)
        pairs = list(zip(grams, radii, strict=True))
        slsqp_seconds = np.mean(
            [mean_seconds(lambda g=g, r=r: slsqp_solve(g, r), 3) for g, r in pairs]
        )
        slsqp_objectives = np.array([dual_objective(slsqp_solve(g, r), g, r) for g, r in pairs])
        for solver in ("jaxopt", "apg"):

            def solve(gram, radius, solver=solver, k=k):
                return cg.solve_dual(gram, radius, jnp.full((k,), 1.0 / k), solver=solver)

            batched = jax.jit(lambda g, r: jax.lax.map(lambda a: solve(*a).weights, (g, r)))
            single = jax.jit(solve)
            in_jit = mean_seconds(lambda: batched(gram_batch, radius_batch), 5) / problems
            per_call = np.mean(
                [
                    mean_seconds(lambda i=i: single(gram_batch[i], radius_batch[i]), 5)
                    for i in range(problems)
                ]
            )
            weights = np.asarray(batched(gram_batch, radius_batch), np.float64)
            ours = np.array(
                [dual_objective(w, g, r) for w, (g, r) in zip(weights, pairs, strict=True)]
            )
            # Positive: our objective is lower (better), relative to |objective|.
            advantage = (slsqp_objectives - ours) / np.abs(slsqp_objectives)
            row = {
                "K": k,
                "solver": solver,
                "slsqp_us": 1e6 * slsqp_seconds,
                "ours_in_jit_us": 1e6 * in_jit,
                "ours_per_call_us": 1e6 * per_call,
                "speedup_in_jit": slsqp_seconds / in_jit,
                "speedup_per_call": slsqp_seconds / per_call,
                "objective_advantage_median": float(np.median(advantage)),
                "objective_advantage_min": float(np.min(advantage)),
            }
            rows.append(row)
            print(
                f"dual K={k} {solver:<6} {row['speedup_in_jit']:6.0f}× faster than SLSQP inside "
                f"jit ({row['ours_in_jit_us']:.0f} µs vs {row['slsqp_us']:.0f} µs), "
                f"{row['speedup_per_call']:.0f}× as one call each; objective advantage median "
                f"{row['objective_advantage_median']:+.1e}, "
                f"worst {row['objective_advantage_min']:+.1e}"
            )
        if with_cvxpy:
            rows.append(bench_cvxpy(k, pairs))
    return rows


def bench_cvxpy(k: int, pairs) -> dict:
    import cvxpy

    @jax.jit
    def ours(gram, radius):
        return cg.solve_dual(gram, radius, jnp.full((k,), 1.0 / k))

    ratios, advantages = [], []
    for gram, radius in pairs:
        chol = np.linalg.cholesky(gram + 1e-12 * np.eye(k))

        def cone(gram=gram, radius=radius, chol=chol):
            w = cvxpy.Variable(k)
            cvxpy.Problem(
                cvxpy.Minimize(w @ gram.mean(axis=1) + radius * cvxpy.norm(chol.T @ w)),
                [w >= 0, cvxpy.sum(w) == 1],
            ).solve(solver=cvxpy.CLARABEL)
            return w.value

        g32, r32 = jnp.asarray(gram, jnp.float32), jnp.asarray(radius, jnp.float32)
        timing = paired_ratio(lambda: ours(g32, r32), cone, rounds=3)
        ratios.append(timing["denominator_ms"] / timing["numerator_ms"])
        reference = dual_objective(cone(), gram, radius)
        mine = dual_objective(np.asarray(ours(g32, r32).weights, np.float64), gram, radius)
        advantages.append((reference - mine) / abs(reference))
    row = {
        "K": k,
        "solver": "jaxopt vs cvxpy+Clarabel (per call)",
        "speedup_per_call": float(np.median(ratios)),
        "objective_advantage_median": float(np.median(advantages)),
        "objective_advantage_min": float(np.min(advantages)),
    }
    print(
        f"dual K={k} vs cvxpy+Clarabel: {row['speedup_per_call']:.0f}× faster per call; objective "
        f"advantage median {row['objective_advantage_median']:+.1e}"
    )
    return row


# ------------------------------------------------------------------------------------------------
# flat / pytree / family: the whole update against linear scalarization.
# ------------------------------------------------------------------------------------------------


def stacked_like(shapes: Sequence[tuple[int, ...]], k: int, seed: int) -> list[jax.Array]:
    """Random stacked gradients with a shared component (so some tasks agree, some conflict)."""
    leaves = []
    for i, shape in enumerate(shapes):
        key = jax.random.key(seed * 1000 + i)
        leaf = jax.random.normal(key, (k, *shape), jnp.float32)
        leaves.append(leaf + 0.3 * leaf[:1])
    return leaves


Rounds = Callable[[int], int]  # entries of the stacked gradients -> interleaved timing rounds


def rounds_by_size(minimum: int, entries_budget: float = 2e8, most: int = 200) -> Rounds:
    """At least `minimum` rounds, more for small programs (whose times are short and noisier):
    about `entries_budget` stacked-gradient entries read per contender in all."""
    return lambda entries: max(minimum, min(most, int(entries_budget / entries)))


def time_update(
    name: str, multitask: optax.GradientTransformation, grads, params, linear, rounds: Rounds
) -> dict:
    """One update of `multitask` against one of `linear` (and a bare pass), steady state."""
    k = jax.tree.leaves(grads)[0].shape[0]
    rounds = rounds(sum(leaf.size for leaf in jax.tree.leaves(grads)))
    step = jax.jit(lambda g, s: multitask.update(g, s, params)[0])
    state = jax.jit(lambda g, s: multitask.update(g, s, params)[1])(grads, multitask.init(params))
    linear_step = jax.jit(lambda g: linear.update(g, optax.EmptyState())[0])
    ones = jnp.ones((k,), jnp.float32)
    bare_pass = jax.jit(lambda g: jax.tree.map(lambda x: jnp.einsum("k,k...->...", ones, x), g))
    versus_linear = paired_ratio(lambda: step(grads, state), lambda: linear_step(grads), rounds)
    versus_pass = paired_ratio(lambda: step(grads, state), lambda: bare_pass(grads), rounds)
    return {
        "method": name,
        "over_linear": versus_linear["ratio"],
        "over_one_pass": versus_pass["ratio"],
        "method_ms": versus_linear["numerator_ms"],
        "linear_ms": versus_linear["denominator_ms"],
        "method_peak_bytes": peak_bytes(
            lambda g, s: multitask.update(g, s, params)[0], grads, state
        ),
        "linear_peak_bytes": peak_bytes(lambda g: linear.update(g, optax.EmptyState())[0], grads),
        "rounds": rounds,
    }


def report(prefix: str, row: dict) -> None:
    print(
        f"{prefix}: {row['method']} / linear = {row['over_linear']:.2f}, / one pass = "
        f"{row['over_one_pass']:.2f} ({row['method_ms']:.1f} ms vs {row['linear_ms']:.1f} ms); "
        f"peak memory {row['method_peak_bytes'] / 2**20:.0f} MiB vs "
        f"{row['linear_peak_bytes'] / 2**20:.0f} MiB"
    )


def bench_flat(sizes: Sequence[int], task_counts: Sequence[int], rounds: Rounds) -> list[dict]:
    rows = []
    for size in sizes:
        for k in task_counts:
            (grads,) = stacked_like([(size,)], k, seed=size + k)
            params = jnp.zeros((size,), jnp.float32)
            row = time_update(
                "camegrad",
                cg.camegrad(num_tasks=k),
                grads,
                params,
                cg.linear_scalarization(),
                rounds,
            )
            row.update({"P": size, "K": k})
            rows.append(row)
            report(f"flat P={size:.0e} K={k}", row)
            del grads
    return rows


def interleaved_ratios(contenders: dict[str, Callable[[], object]], baseline: str, rounds: int):
    """Median over rounds of time(contender) / time(baseline), for each contender, in a shuffled
    order every round."""
    times = interleaved_times(contenders, rounds, shuffle_seed=0)
    return {
        name: float(np.median(t / times[baseline])) for name, t in times.items() if name != baseline
    }


def gram_strategies(k: int, size: int) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """Every way `camegrad_jax._tree` can reduce one (K, P) leaf to G, and the references."""
    from camegrad_jax import _tree

    def as_f32(fn):
        return lambda flat: fn(flat, jnp.float32)

    strategies = {
        "library": lambda flat: _tree.gram_matrix([flat], jnp.float32),
        "XLA choice": as_f32(_tree._xla_leaf_gram),
        "fused": as_f32(_tree._fused_leaf_gram),
        "matrix product": lambda flat: jnp.dot(flat, flat.T),
    }
    if k == 2:
        strategies["two-row"] = as_f32(_tree._two_row_leaf_gram)
    if size >= 2 * _tree._GRAM_CHUNK:
        strategies["chunk walk"] = as_f32(_tree._chunked_leaf_gram)
    return strategies


def bench_gram(sizes: Sequence[int], task_counts: Sequence[int], rounds: Rounds) -> list[dict]:
    """The Gram reductions the library chooses between, each alone, against the linear update.

    "one pass" (Σ of all squared entries, one read of the data) is the floor of any reduction;
    "G + sum" is the library's G followed by the weighted sum, i.e. everything in a Gram-based
    update but the K × K solve.
    """
    from camegrad_jax import _tree

    rows = []
    for size in sizes:
        for k in task_counts:
            (flat,) = stacked_like([(size,)], k, seed=size + 3 * k)
            ones = jnp.ones((k,), jnp.float32)
            fns = {"linear": jax.jit(lambda g, ones=ones: _tree.combine([g], ones)[0])}
            fns["one pass"] = jax.jit(lambda g: jnp.sum(g * g))
            for name, strategy in gram_strategies(k, size).items():
                fns[name] = jax.jit(strategy)
            fns["G + sum"] = jax.jit(
                lambda g: _tree.combine([g], _tree.gram_matrix([g], jnp.float32)[0])[0]
            )
            rounds_here = rounds(flat.size)
            ratios = interleaved_ratios(
                {name: (lambda fn=fn, g=flat: fn(g)) for name, fn in fns.items()},
                "linear",
                rounds_here,
            )
            rows.append({"P": size, "K": k, "over_linear": ratios, "rounds": rounds_here})
            shown = ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items())
            print(f"gram P={size:.0e} K={k} (/ linear): {shown}")
            del flat
    return rows


def reference_model_shapes(width_scale: int) -> tuple[list[tuple[int, ...]], object]:
    """Parameter shapes (and tree structure) of the reference RRG model at the reference
    setup's sizes (d_model 128, 2 + 2 layers), its widths multiplied by `width_scale`."""
    from flax import nnx

    from camegrad_jax.rrg.model import ModelConfig, RRGModel

    config = ModelConfig(
        vocab_size=1000,
        conv_features=tuple(c * width_scale for c in (32, 64, 128, 128)),
        d_model=128 * width_scale,
        d_ff=256 * width_scale,
    )
    abstract = nnx.eval_shape(lambda: RRGModel(config, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    return [leaf.shape for leaf in leaves], treedef


def bench_pytree(width_scales: Sequence[int], task_counts: Sequence[int], rounds: Rounds) -> list:
    rows = []
    for scale in width_scales:
        shapes, treedef = reference_model_shapes(scale)
        size = int(sum(np.prod(s) for s in shapes))
        params = jax.tree.unflatten(treedef, [jnp.zeros(s, jnp.float32) for s in shapes])
        for k in task_counts:
            grads = jax.tree.unflatten(treedef, stacked_like(shapes, k, seed=k))
            row = time_update(
                "camegrad",
                cg.camegrad(num_tasks=k),
                grads,
                params,
                cg.linear_scalarization(),
                rounds,
            )
            row.update({"P": size, "K": k, "leaves": len(shapes), "width_scale": scale})
            rows.append(row)
            report(f"pytree {len(shapes)} leaves P={size:.2e} K={k}", row)
            del grads
    return rows


# Every registered method that forms the task Gram matrix and needs no extra input, against the
# linear baseline (variants and the baseline itself left out), built with its example arguments.
FAMILY = {
    info.name: info
    for info in cg.registered_methods(kinds=("gram", "gradient"), inputs=(), variants=False)
    if not info.baseline
}


def bench_solvers(sizes: Sequence[int], task_counts: Sequence[int], rounds: Rounds) -> list:
    """Update time / linear time for both solvers; few compilations (no memory figures), so that
    an accelerator run fits its time box. Each row is printed as soon as it is measured."""
    rows = []
    linear = cg.linear_scalarization()
    for size in sizes:
        for k in task_counts:
            (grads,) = stacked_like([(size,)], k, seed=size + k)
            n_rounds = rounds(grads.size)
            linear_step = jax.jit(lambda g: linear.update(g, optax.EmptyState())[0])
            contenders = {"linear": lambda g=grads: linear_step(g)}
            for solver in ("jaxopt", "enumerate"):
                tx = cg.camegrad(num_tasks=k, solver=solver)
                update = jax.jit(tx.update)
                _, state = update(grads, tx.init(grads[0]))  # steady state: warm-started
                contenders[solver] = lambda u=update, g=grads, s=state: u(g, s)[0]
            ratios = interleaved_ratios(contenders, "linear", n_rounds)
            for solver in ("jaxopt", "enumerate"):
                rows.append({"P": size, "K": k, "solver": solver, "over_linear": ratios[solver]})
            print(
                f"solvers P={size:.0e} K={k}: update / linear = {ratios['jaxopt']:.2f} (jaxopt), "
                f"{ratios['enumerate']:.2f} (enumerate)",
                flush=True,
            )
            del grads, contenders
    return rows


def bench_family(size: int, task_counts: Sequence[int], rounds: Rounds) -> list[dict]:
    rows = []
    for k in task_counts:
        (grads,) = stacked_like([(size,)], k, seed=7 + k)
        params = jnp.zeros((size,), jnp.float32)
        for name, info in FAMILY.items():
            if k < info.min_tasks:
                continue
            tx = info.build(num_tasks=k, **info.example_kwargs)
            row = time_update(name, tx, grads, params, cg.linear_scalarization(), rounds)
            row.update({"P": size, "K": k})
            rows.append(row)
            report(f"family P={size:.0e} K={k}", row)
    return rows


def bench_torchjd(torch_python: str, sizes: Sequence[int], task_counts: Sequence[int]) -> list:
    if not Path(torch_python).exists():
        print(f"torchjd: skipped, no interpreter at {torch_python} (run `make bench-env`)")
        return []
    command = [
        torch_python,
        str(ROOT / "benchmarks" / "torchjd_cagrad.py"),
        ",".join(str(s) for s in sizes),
        ",".join(str(k) for k in task_counts),
    ]
    rows = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    for row in rows:
        print(f"torchjd P={row['P']:.0e} K={row['K']}: CAGrad / sum = {row['cagrad_over_sum']:.2f}")
    return rows


# ------------------------------------------------------------------------------------------------
# train / full_run: the reference report-generation model.
# ------------------------------------------------------------------------------------------------

TINY_TRAIN = {
    "synthetic_train_size": 64,
    "synthetic_val_size": 8,
    "synthetic_test_size": 8,
    "image_size": 16,
    "max_len": 30,
    "conv_features": (8, 16),
    "norm_groups": 4,
    "d_model": 32,
    "num_heads": 2,
    "d_ff": 64,
    "batch_size": 8,
}


def bench_train(quick: bool, rounds: int) -> dict:
    """Train steps of the reference model: camegrad and Gram-only camegrad against linear
    scalarization, both as the trainer runs it (K per-task gradients, then their weighted sum)
    and as one backward pass of the weighted loss."""
    from camegrad_jax.rrg.config import TrainConfig
    from camegrad_jax.rrg.experiment import build_setup, load_data, make_train_step
    from camegrad_jax.rrg.model import loss_vector
    from camegrad_jax.rrg.optim import build_optimizer

    config = TrainConfig(**TINY_TRAIN) if quick else TrainConfig()
    dataset = load_data(config)
    batches = list(
        dataset.iterate_batches("train", config.batch_size, shuffle=True, drop_last=True)
    )
    contenders = {}
    for name in ("linear", "camegrad"):
        setup = build_setup(config.replace(optimizer=name), dataset=dataset)
        step_fn = make_train_step(setup.graphdef, setup.tx, setup.schedule, config.seed)
        params = jax.tree.map(jnp.copy, setup.params)
        contenders[name] = [step_fn, params, setup.init_opt_state(params), setup.rest]

    # Gram-only: G from the last conv block of the shared encoder, one weighted backward pass.
    setup = build_setup(config.replace(optimizer="camegrad"), dataset=dataset)
    last_block = len(setup.params["visual_encoder"]["blocks"]) - 1
    gram_mask = jax.tree_util.tree_map_with_path(
        lambda path, _: (
            f"['blocks'][{last_block}]" in jax.tree_util.keystr(path)
            and "visual_encoder" in jax.tree_util.keystr(path)
        ),
        setup.params,
    )
    downstream = build_optimizer(
        optax.identity(), setup.params, setup.schedule, weight_decay=config.weight_decay
    )

    def gram_only_step(params, states, rest, batch, step):
        multitask_state, downstream_state = states

        # The same dropout keys as the trainer's steps.
        key = jax.random.fold_in(jax.random.key(config.seed, impl="rbg"), step)

        def loss_fn(p):
            return loss_vector(setup.graphdef, p, rest, batch, train=True, dropout_key=key)

        losses, grads, multitask_state = cg.gram_only_gradients(
            loss_fn,
            params,
            transform=setup.multitask,
            state=multitask_state,
            gram_mask=gram_mask,
            shared_mask=setup.shared_mask,
            task_weights=list(config.task_weights),
        )
        updates, downstream_state = downstream.update(grads, downstream_state, params)
        return optax.apply_updates(params, updates), (multitask_state, downstream_state), losses

    params = jax.tree.map(jnp.copy, setup.params)
    contenders["gram_only"] = [
        jax.jit(gram_only_step, donate_argnums=(0, 1)),
        params,
        (setup.multitask.init(params), downstream.init(params)),
        setup.rest,
    ]

    # What a linear-scalarization user runs without this library: one backward pass of
    # Σ λ_i L_i (no per-task gradients), then the same AdamW.
    weights = jnp.asarray(config.task_weights, jnp.float32)

    def one_backward_step(params, opt_state, rest, batch, step):
        key = jax.random.fold_in(jax.random.key(config.seed, impl="rbg"), step)

        def total_loss(p):
            losses = loss_vector(setup.graphdef, p, rest, batch, train=True, dropout_key=key)
            return jnp.dot(weights, losses), losses

        (_, losses), grads = jax.value_and_grad(total_loss, has_aux=True)(params)
        updates, opt_state = downstream.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, losses

    params = jax.tree.map(jnp.copy, setup.params)
    contenders["linear_one_backward"] = [
        jax.jit(one_backward_step, donate_argnums=(0, 1)),
        params,
        downstream.init(params),
        setup.rest,
    ]

    def run(name: str, step: int) -> float:
        step_fn, params, opt_state, rest = contenders[name]
        start = time.perf_counter()
        params, opt_state, out = step_fn(
            params, opt_state, rest, batches[step % len(batches)], jnp.int32(step)
        )
        jax.block_until_ready(out)
        contenders[name][1:3] = params, opt_state
        return time.perf_counter() - start

    compile_seconds = {name: run(name, 0) for name in contenders}
    for step in range(1, 3):
        for name in contenders:
            run(name, step)
    times = {name: [] for name in contenders}
    for step in range(3, 3 + rounds):
        for name in contenders:
            times[name].append(run(name, step))
    linear = np.asarray(times["linear"])
    one_backward = np.asarray(times["linear_one_backward"])
    result = {
        "camegrad_over_linear": float(np.median(np.asarray(times["camegrad"]) / linear)),
        "gram_only_over_linear": float(np.median(np.asarray(times["gram_only"]) / linear)),
        "camegrad_over_one_backward": float(
            np.median(np.asarray(times["camegrad"]) / one_backward)
        ),
        "gram_only_over_one_backward": float(
            np.median(np.asarray(times["gram_only"]) / one_backward)
        ),
        "milliseconds": {name: 1e3 * float(np.median(t)) for name, t in times.items()},
        "first_call_seconds": compile_seconds,
        "rounds": rounds,
        "batch_size": config.batch_size,
        "num_params": int(sum(x.size for x in jax.tree.leaves(setup.params))),
    }
    print(
        f"train step ({result['num_params']:,} parameters, batch {config.batch_size}): "
        f"camegrad / linear = {result['camegrad_over_linear']:.2f}, Gram-only camegrad / linear "
        f"= {result['gram_only_over_linear']:.2f}; against one backward pass of the weighted sum: "
        f"camegrad {result['camegrad_over_one_backward']:.2f}, Gram-only "
        f"{result['gram_only_over_one_backward']:.2f} ({result['milliseconds']})"
    )
    return result


def bench_full_run(quick: bool) -> dict:
    """A default `camegrad-rrg train` in a child process: wall time and peak memory."""
    with tempfile.TemporaryDirectory() as save_dir:
        command = [sys.executable, "-m", "camegrad_jax.rrg.cli", "train", "--save-dir", save_dir]
        command += ["--no-progress"]
        if quick:
            command += ["--synthetic-train-size", "64", "--synthetic-val-size", "8"]
            command += ["--synthetic-test-size", "8", "--epochs", "1", "--no-meteor-test"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(save_dir, "results.json")) as handle:
            results = json.load(handle)
    # Linux reports ru_maxrss in KiB (the largest child waited for: the training process).
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "wall_seconds": wall,
        "peak_rss_mb": peak_mb,
        "total_steps": results["optimizer"]["total_steps"],
    }
    print(
        f"default train run ({result['total_steps']} steps): wall {wall:.0f} s, "
        f"peak memory {peak_mb:.0f} MB"
    )
    return result


# ------------------------------------------------------------------------------------------------
# lowmem: the exact Gram one task at a time against the stacked gradients.
# ------------------------------------------------------------------------------------------------


def trunk_and_heads(size: int, k: int, batch: int = 32):
    """An MLP of about `size` parameters: 4 square tanh layers shared by K linear heads."""
    width = int(np.sqrt(size / 4))
    keys = jax.random.split(jax.random.key(size + k), 6)
    params = {
        "trunk": [jax.random.normal(keys[i], (width, width)) / np.sqrt(width) for i in range(4)],
        "heads": jax.random.normal(keys[4], (k, width)) / np.sqrt(width),
    }
    x = jax.random.normal(keys[5], (batch, width))

    def losses(p, x):
        z = x
        for w in p["trunk"]:
            z = jnp.tanh(z @ w)
        return jnp.mean((z @ p["heads"].T - 1.0) ** 2, axis=0)

    return params, x, losses


def lowmem_routes(k: int, size: int):
    """The two routes to the camegrad gradient of `trunk_and_heads(size, k)`, and their inputs."""
    params, x, losses = trunk_and_heads(size, k)
    tx = cg.camegrad(num_tasks=k)
    state = tx.init(params)

    def stacked(p, s, x):
        _, grads = cg.task_gradients(losses, p, x)
        return tx.update(grads, s, p)[0]

    def low_memory(p, s, x):
        return cg.gram_only_gradients(losses, p, x, transform=tx, state=s, low_memory=True)[1]

    return {"stacked": stacked, "low_memory": low_memory}, (params, state, x)


def bench_lowmem(sizes: Sequence[int], task_counts: Sequence[int], rounds: int, compile_only):
    rows = []
    for size in [*sizes, *compile_only]:
        for k in task_counts:
            routes, inputs = lowmem_routes(k, size)
            row = {"P": int(sum(leaf.size for leaf in jax.tree.leaves(inputs[0]))), "K": k}
            for name, fn in routes.items():
                row[f"{name}_peak_bytes"] = peak_bytes(fn, *inputs)
            row["peak_ratio"] = row["low_memory_peak_bytes"] / row["stacked_peak_bytes"]
            text = f"peak memory low/stacked = {row['peak_ratio']:.2f}"
            if size not in compile_only:
                jitted = {name: jax.jit(fn) for name, fn in routes.items()}
                timed = paired_ratio(
                    lambda j=jitted, a=inputs: j["low_memory"](*a),
                    lambda j=jitted, a=inputs: j["stacked"](*a),
                    rounds,
                )
                row.update(
                    time_ratio=timed["ratio"],
                    low_memory_ms=timed["numerator_ms"],
                    stacked_ms=timed["denominator_ms"],
                )
                text += (
                    f", time low/stacked = {timed['ratio']:.2f} ({timed['numerator_ms']:.1f} ms "
                    f"vs {timed['denominator_ms']:.1f} ms)"
                )
            rows.append(row)
            print(f"lowmem P={row['P']:.2e} K={k}: {text}")
            del inputs
    return rows


SECTIONS = (
    "dual",
    "flat",
    "gram",
    "pytree",
    "family",
    "torchjd",
    "train",
    "solvers",
    "lowmem",
    "full_run",
)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sections",
        default=",".join(s for s in SECTIONS if s not in ("full_run", "solvers")),
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--cvxpy", action="store_true", help="also time cvxpy + Clarabel")
    parser.add_argument(
        "--rounds", type=int, default=15, help="interleaved timing rounds (more for small programs)"
    )
    parser.add_argument("--torch-python", default=str(ROOT / ".venv-torch" / "bin" / "python"))
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    quick = args.quick
    rounds = (lambda entries: 3) if quick else rounds_by_size(args.rounds)

    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    )
    results: dict = {"jax": jax.__version__, "backend": jax.default_backend()}
    if "dual" in sections:
        results["dual"] = bench_dual((2, 4) if quick else (2, 4, 8), 3 if quick else 20, args.cvxpy)
    if "flat" in sections:
        sizes = (10_000,) if quick else (1_000_000, 10_000_000, 50_000_000)
        results["flat"] = bench_flat(sizes, (2,) if quick else (2, 4, 8), rounds)
    if "gram" in sections:
        sizes = (10_000,) if quick else (100_000, 1_000_000, 10_000_000)
        results["gram"] = bench_gram(sizes, (2,) if quick else (2, 3, 4, 8), rounds)
    if "pytree" in sections:
        results["pytree"] = bench_pytree(
            (1,) if quick else (1, 3), (2,) if quick else (2, 4, 8), rounds
        )
    if "family" in sections:
        results["family"] = bench_family(
            10_000 if quick else 10_000_000, (2,) if quick else (2, 8), rounds
        )
    if "torchjd" in sections:
        results["torchjd"] = bench_torchjd(
            args.torch_python,
            (10_000,) if quick else (1_000_000, 10_000_000),
            (2,) if quick else (2, 8),
        )
    if "train" in sections:
        results["train"] = bench_train(quick, 3 if quick else 20)
    if "solvers" in sections:
        results["solvers"] = bench_solvers(
            (10_000,) if quick else (1_000_000, 10_000_000, 100_000_000),
            (2,) if quick else (2, 4, 8),
            rounds,
        )
    if "lowmem" in sections:
        results["lowmem"] = bench_lowmem(
            (10_000,) if quick else (100_000, 1_300_000, 10_000_000),
            (2, 4) if quick else (2, 4, 8),
            3 if quick else args.rounds,
            () if quick else (100_000_000,),
        )
    if "full_run" in sections:
        results["full_run"] = bench_full_run(quick)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
