"""Side-by-side ratios for the multi-task transformations (every figure measured in this run).

Sections (``--sections``, comma-separated):

* ``dual``: the jitted Stage-1 dual (jaxopt and jaxopt-free solvers, exact polish) against SciPy's
  SLSQP — what the reference CAGrad code uses — on the same trace-normalised Gram matrices, with
  the objective each reaches; optionally against a cone program (cvxpy + Clarabel).
* ``transform``: one ``camegrad`` update against one ``linear_scalarization`` update (the same
  stacked gradients, jitted), and against a bare pass over the stacked gradients, for a flat
  parameter vector; with XLA's compiled peak-memory estimate for each.

Timing: the contenders run interleaved (A, B, A, B, …) and the reported ratio is the median of
the per-round ratios, so load on this shared machine hits both sides alike.

    python benchmarks/transform_bench.py               # default sizes
    python benchmarks/transform_bench.py --quick       # seconds, for a smoke test
    python benchmarks/transform_bench.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import camegrad_jax as cg


def paired_ratio(
    numerator: Callable[[], object], denominator: Callable[[], object], rounds: int
) -> dict:
    """Median over interleaved rounds of time(numerator) / time(denominator)."""
    jax.block_until_ready(numerator())
    jax.block_until_ready(denominator())
    ratios, num_times, den_times = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(numerator())
        middle = time.perf_counter()
        jax.block_until_ready(denominator())
        end = time.perf_counter()
        num_times.append(middle - start)
        den_times.append(end - middle)
        ratios.append((middle - start) / (end - middle))
    return {
        "ratio": float(np.median(ratios)),
        "numerator_ms": 1e3 * float(np.median(num_times)),
        "denominator_ms": 1e3 * float(np.median(den_times)),
    }


def peak_bytes(fn: Callable, *args) -> int:
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes + stats.argument_size_in_bytes)


# ------------------------------------------------------------------------------------------------
# Stage 1's dual against SciPy SLSQP.
# ------------------------------------------------------------------------------------------------


def random_normalised_gram(rng: np.random.Generator, num_tasks: int) -> np.ndarray:
    shared = rng.normal(size=256)
    h = rng.normal(size=(num_tasks, 256)) + rng.uniform(-0.5, 1.0) * shared
    h *= np.exp(rng.uniform(-1.5, 1.5, size=(num_tasks, 1)))
    gram = h @ h.T
    return gram / np.trace(gram)


def slsqp_solve(gram: np.ndarray, radius: float):
    from scipy.optimize import minimize

    k = gram.shape[0]
    centre = gram.mean(axis=1)

    def objective(w):
        return w @ centre + radius * np.sqrt(max(w @ gram @ w, 0.0) + 1e-8)

    result = minimize(
        objective,
        np.full(k, 1.0 / k),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints={"type": "eq", "fun": lambda w: np.sum(w) - 1.0},
    )
    return result.x


def dual_objective_np(w, gram, radius):
    return float(w @ gram.mean(axis=1) + radius * np.sqrt(max(w @ gram @ w, 0.0)))


def mean_seconds(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats


def bench_dual(task_counts: Sequence[int], problems: int, with_cvxpy: bool) -> list[dict]:
    """Our solve both inside one jitted program (as in a train step, amortised over a batch of
    problems with lax.map) and as one jitted call per problem (dispatch included)."""
    rows = []
    rng = np.random.default_rng(0)
    for k in task_counts:
        grams = [random_normalised_gram(rng, k) for _ in range(problems)]
        radii = [0.5 * np.sqrt(np.mean(g)) for g in grams]
        gram_batch = jnp.asarray(np.stack(grams), jnp.float32)
        radius_batch = jnp.asarray(np.array(radii), jnp.float32)
        slsqp_seconds = np.mean(
            [
                mean_seconds(lambda g=g, r=r: slsqp_solve(g, r), 3)
                for g, r in zip(grams, radii, strict=True)
            ]
        )
        slsqp_objectives = np.array(
            [dual_objective_np(slsqp_solve(g, r), g, r) for g, r in zip(grams, radii, strict=True)]
        )
        for solver in ("jaxopt", "apg"):

            def solve(gram, radius, solver=solver):
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
                [dual_objective_np(w, g, r) for w, g, r in zip(weights, grams, radii, strict=True)]
            )
            # Positive: our objective is lower (better), relative to |objective|.
            advantage = (slsqp_objectives - ours) / np.abs(slsqp_objectives)
            rows.append(
                {
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
            )
            row = rows[-1]
            print(
                f"dual K={k} {solver:<6} {row['speedup_in_jit']:6.0f}× faster than SLSQP inside "
                f"jit ({row['ours_in_jit_us']:.0f} µs vs {row['slsqp_us']:.0f} µs), "
                f"{row['speedup_per_call']:.0f}× as one call each; objective advantage median "
                f"{row['objective_advantage_median']:+.1e}, "
                f"worst {row['objective_advantage_min']:+.1e}"
            )
        if with_cvxpy:
            rows.append(bench_cvxpy(k, grams, radii))
    return rows


def bench_cvxpy(k: int, grams, radii) -> dict:
    import cvxpy

    @jax.jit
    def ours(gram, radius):
        return cg.solve_dual(gram, radius, jnp.full((k,), 1.0 / k))

    ratios, gaps = [], []
    for gram, radius in zip(grams, radii, strict=True):
        chol = np.linalg.cholesky(gram + 1e-12 * np.eye(k))

        def cone(gram=gram, radius=radius, chol=chol):
            w = cvxpy.Variable(k)
            problem = cvxpy.Problem(
                cvxpy.Minimize(w @ gram.mean(axis=1) + radius * cvxpy.norm(chol.T @ w)),
                [w >= 0, cvxpy.sum(w) == 1],
            )
            problem.solve(solver=cvxpy.CLARABEL)
            return w.value

        g32, r32 = jnp.asarray(gram, jnp.float32), jnp.asarray(radius, jnp.float32)
        timing = paired_ratio(lambda: ours(g32, r32), cone, rounds=3)
        ratios.append(timing["denominator_ms"] / timing["numerator_ms"])
        ref = dual_objective_np(cone(), gram, radius)
        mine = dual_objective_np(np.asarray(ours(g32, r32).weights, np.float64), gram, radius)
        gaps.append((ref - mine) / abs(ref))
    row = {
        "K": k,
        "solver": "jaxopt vs cvxpy+Clarabel",
        "speedup_vs_cone_median": float(np.median(ratios)),
        "objective_advantage_median": float(np.median(gaps)),
        "objective_advantage_min": float(np.min(gaps)),
    }
    print(
        f"dual K={k} vs cvxpy+Clarabel: {row['speedup_vs_cone_median']:.1f}× faster; objective "
        f"advantage median {row['objective_advantage_median']:+.1e}"
    )
    return row


# ------------------------------------------------------------------------------------------------
# The transformation against linear scalarization.
# ------------------------------------------------------------------------------------------------


def bench_transform(sizes: Sequence[int], task_counts: Sequence[int], rounds: int) -> list[dict]:
    rows = []
    for size in sizes:
        for k in task_counts:
            key = jax.random.key(size + k)
            grads = jax.random.normal(key, (k, size), jnp.float32)
            grads = grads + 0.3 * grads[:1]  # some shared component, some conflict
            params = jnp.zeros((size,), jnp.float32)
            came = cg.camegrad(0.5, 1.5, 0.2, num_tasks=k)
            linear = cg.linear_scalarization(num_tasks=k)
            came_step = jax.jit(lambda g, s: came.update(g, s)[0])
            linear_step = jax.jit(lambda g, s: linear.update(g, s)[0])
            # Steady state, as in training: the dual is warm-started from the last step.
            came_state = jax.jit(came.update)(grads, came.init(params))[1]
            linear_state = linear.init(params)
            bare_pass = jax.jit(lambda g: jnp.einsum("k,kn->n", jnp.ones(k, g.dtype), g))

            versus_linear = paired_ratio(
                lambda: came_step(grads, came_state),
                lambda: linear_step(grads, linear_state),
                rounds,
            )
            versus_pass = paired_ratio(
                lambda: came_step(grads, came_state), lambda: bare_pass(grads), rounds
            )
            row = {
                "P": size,
                "K": k,
                "camegrad_over_linear": versus_linear["ratio"],
                "camegrad_over_one_pass": versus_pass["ratio"],
                "camegrad_ms": versus_linear["numerator_ms"],
                "linear_ms": versus_linear["denominator_ms"],
                "camegrad_peak_bytes": peak_bytes(
                    lambda g, s: came.update(g, s)[0], grads, came_state
                ),
                "linear_peak_bytes": peak_bytes(
                    lambda g, s: linear.update(g, s)[0], grads, linear_state
                ),
            }
            rows.append(row)
            print(
                f"transform P={size:.0e} K={k}: camegrad / linear = "
                f"{row['camegrad_over_linear']:.2f}, camegrad / one pass = "
                f"{row['camegrad_over_one_pass']:.2f}; peak memory camegrad "
                f"{row['camegrad_peak_bytes'] / 2**20:.0f} MiB vs linear "
                f"{row['linear_peak_bytes'] / 2**20:.0f} MiB"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="dual,transform")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--cvxpy", action="store_true", help="also time cvxpy + Clarabel")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    sections = set(args.sections.split(","))

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {platform.processor() or ''}")
    results: dict = {"jax": jax.__version__, "backend": jax.default_backend()}
    if "dual" in sections:
        results["dual"] = bench_dual(
            (2, 4) if args.quick else (2, 4, 8), 3 if args.quick else 20, args.cvxpy
        )
    if "transform" in sections:
        results["transform"] = bench_transform(
            (10_000,) if args.quick else (1_000_000, 10_000_000),
            (2,) if args.quick else (2, 4),
            rounds=3 if args.quick else 15,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
