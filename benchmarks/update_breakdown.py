"""Where the time of one Gram-based update goes, piece by piece, with the CPU Gram kernel and
without it.

Issue 18, part 4 asked for a camegrad update at K = 8, P = 1e6 within 3× the linear update, the
floor being about 2× (one read of the stack for G, one for the weighted sum). At K = 8, though,
forming G takes 64 multiply-adds per column of the stack (16 flops per entry read, against 2 for
the linear update): it is bound by arithmetic unless the kernel keeps its operands in registers,
which XLA:CPU's reductions and matrix products do not (nor OpenBLAS, timed here for reference).
The compiled kernel (`camegrad_jax/_native/task_gram.cc`) does. This script times, side by side
in one run, as ratios to the linear update on the same stacked gradients:

* the whole ``camegrad`` update in steady state, with the kernel and with the XLA reductions
  (``CAMEGRAD_JAX_NATIVE_GRAM=0``'s path);
* its pieces: the Gram matrix by the kernel and by the XLA reductions, the weighted sum
  (``combine``) and Stages 1–3's K × K solve from G;
* the same Gram by OpenBLAS (``numpy``'s ``a @ a.T``, outside JAX).

    python benchmarks/update_breakdown.py                     # K = 2, 4, 8; P = 1e6 and 1e7
    python benchmarks/update_breakdown.py --tasks 8 --sizes 1e6 --rounds 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

import camegrad_jax as cg
from camegrad_jax import _native_gram, _tree
from camegrad_jax._camegrad import camegrad_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmarks import interleaved_times, stacked_like  # noqa: E402


def compiled_update(method, stack, state, params, kernel: bool):
    """The jitted update, traced (and so compiled) with or without the kernel."""
    step = jax.jit(lambda g, s: method.update(g, s, params)[0])
    with mock.patch.object(_native_gram, "available", lambda: kernel and _native_gram._load()[0]):
        return step.lower(stack, state).compile()


def measure(num_tasks: int, size: int, rounds: int) -> dict:
    (stack,) = stacked_like([(size,)], num_tasks, seed=size + num_tasks)
    host = np.asarray(stack)
    params = jnp.zeros((size,), jnp.float32)
    method, linear = cg.camegrad(num_tasks=num_tasks), cg.linear_scalarization()
    state = jax.jit(lambda g, s: method.update(g, s, params)[1])(stack, method.init(params))
    linear_update = jax.jit(lambda g: linear.update(g, optax.EmptyState())[0])
    with_kernel = compiled_update(method, stack, state, params, kernel=True)
    with_xla = compiled_update(method, stack, state, params, kernel=False)
    xla_gram = jax.jit(lambda g: _tree._xla_leaf_gram(g, jnp.float32))
    combine = jax.jit(lambda g, b: _tree.combine([g], b)[0])
    solve = jax.jit(lambda G: camegrad_weights(G).coefficients)
    gram = xla_gram(stack)
    ones = jnp.ones((num_tasks,), jnp.float32)
    contenders = {
        "linear update": lambda: linear_update(stack),
        "camegrad update (XLA Gram)": lambda: with_xla(stack, state),
        "Gram (XLA)": lambda: xla_gram(stack),
        "Gram (OpenBLAS a @ a.T)": lambda: host @ host.T,
        "weighted sum": lambda: combine(stack, ones),
        "K x K solve from G": lambda: solve(gram),
    }
    if _native_gram.available():
        kernel_gram = jax.jit(_native_gram.task_gram_f32)
        contenders["camegrad update (kernel)"] = lambda: with_kernel(stack, state)
        contenders["Gram (kernel)"] = lambda: kernel_gram(stack)
    times = interleaved_times(contenders, rounds, shuffle_seed=size + num_tasks)
    base = times["linear update"]
    return {
        "K": num_tasks,
        "P": size,
        "rounds": rounds,
        "kernel": cg.native_gram_status(),
        "over_linear": {n: float(np.median(t / base)) for n, t in times.items() if t is not base},
        "linear_ms": 1e3 * float(np.median(base)),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="2,4,8", help="comma-separated K")
    parser.add_argument("--sizes", default="1e6,1e7", help="comma-separated P (entries per task)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores, load "
        f"average {os.getloadavg()[0]:.1f}; Gram kernel {cg.native_gram_status()}"
    )
    rows = []
    for size in [int(float(s)) for s in args.sizes.split(",")]:
        for num_tasks in [int(k) for k in args.tasks.split(",")]:
            row = measure(num_tasks, size, args.rounds)
            rows.append(row)
            shown = ", ".join(f"{n} {v:.2f}" for n, v in row["over_linear"].items())
            print(f"K={num_tasks} P={size:.0e} (/ linear, {row['linear_ms']:.2f} ms): {shown}")
    result = {"jax": jax.__version__, "cores": os.cpu_count(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
