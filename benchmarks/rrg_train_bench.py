"""Cost of CAME-Grad in the reference report-generation trainer (every figure measured here).

* ``step``: one jitted train step with ``camegrad`` against one with the ``linear`` baseline
  (both with gradient statistics on, as the trainer runs them), on the default configuration's
  model and batches. The two run interleaved (linear, camegrad, linear, …), each on its own
  parameters and optimizer state, and the reported ratio is the median of the per-round ratios,
  so load on this shared machine hits both sides alike.
* ``--full-run``: a default ``camegrad-rrg train`` in a child process: wall time, and peak
  memory (the child's maximum resident set size).

    python benchmarks/rrg_train_bench.py                 # step ratio, default config
    python benchmarks/rrg_train_bench.py --full-run      # and a whole default run
    python benchmarks/rrg_train_bench.py --quick         # tiny config, a smoke test
    python benchmarks/rrg_train_bench.py --json out.json
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

import jax
import jax.numpy as jnp
import numpy as np

from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.experiment import build_setup, load_data, make_train_step

QUICK = {
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


def bench_step(config: TrainConfig, rounds: int) -> dict:
    """Median over interleaved rounds of time(camegrad step) / time(linear step)."""
    dataset = load_data(config)
    contenders = {}
    for name in ("linear", "camegrad"):
        setup = build_setup(config.replace(optimizer=name), dataset=dataset)
        step_fn = make_train_step(setup.graphdef, setup.tx, setup.schedule, config.seed)
        params = jax.tree.map(jnp.copy, setup.params)
        contenders[name] = [step_fn, params, setup.init_opt_state(params), setup.rest]
    batches = list(
        dataset.iterate_batches("train", config.batch_size, shuffle=True, drop_last=True)
    )

    def run(name: str, step: int) -> float:
        step_fn, params, opt_state, rest = contenders[name]
        start = time.perf_counter()
        params, opt_state, diagnostics = step_fn(
            params, opt_state, rest, batches[step % len(batches)], jnp.int32(step)
        )
        jax.block_until_ready(diagnostics)
        contenders[name][1:3] = params, opt_state
        return time.perf_counter() - start

    compile_seconds = {name: run(name, 0) for name in contenders}
    for step in range(1, 3):  # warm-up
        for name in contenders:
            run(name, step)
    linear, camegrad = [], []
    for step in range(3, 3 + rounds):
        linear.append(run("linear", step))
        camegrad.append(run("camegrad", step))
    ratios = np.asarray(camegrad) / np.asarray(linear)
    result = {
        "ratio_camegrad_over_linear": float(np.median(ratios)),
        "ratio_q25_q75": [float(q) for q in np.quantile(ratios, [0.25, 0.75])],
        "linear_ms": 1e3 * float(np.median(linear)),
        "camegrad_ms": 1e3 * float(np.median(camegrad)),
        "first_call_seconds": compile_seconds,
        "rounds": rounds,
        "batch_size": config.batch_size,
    }
    print(
        f"train step: camegrad / linear = {result['ratio_camegrad_over_linear']:.3f} "
        f"(IQR {result['ratio_q25_q75'][0]:.3f}–{result['ratio_q25_q75'][1]:.3f}); "
        f"linear {result['linear_ms']:.0f} ms, camegrad {result['camegrad_ms']:.0f} ms "
        f"(median of {rounds} interleaved rounds, batch {config.batch_size})"
    )
    return result


def bench_full_run(optimizer: str, quick: bool) -> dict:
    """A default `camegrad-rrg train` in a child process: wall time and peak memory."""
    with tempfile.TemporaryDirectory() as save_dir:
        command = [
            sys.executable,
            "-m",
            "camegrad_jax.rrg.cli",
            "train",
            "--save-dir",
            save_dir,
            "--optimizer",
            optimizer,
            "--no-progress",
        ]
        if quick:
            command += ["--synthetic-train-size", "64", "--synthetic-val-size", "8"]
            command += ["--synthetic-test-size", "8", "--epochs", "1", "--no-meteor-test"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
        wall = time.perf_counter() - start
        with open(os.path.join(save_dir, "results.json")) as handle:
            results = json.load(handle)
    # Linux reports ru_maxrss in KiB (the largest child waited for: the training process).
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "optimizer": optimizer,
        "wall_seconds": wall,
        "peak_rss_mb": peak_mb,
        "train_reported_wall_seconds": results["timing"]["wall_seconds"],
        "total_steps": results["optimizer"]["total_steps"],
        "test_ce_example_f1": results["test"]["ce_example_f1"],
        "test_BLEU_4": results["test"]["BLEU_4"],
    }
    print(
        f"default train run ({optimizer}, {result['total_steps']} steps): wall "
        f"{wall:.0f} s, peak memory {peak_mb:.0f} MB"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--full-run", action="store_true", help="also time a default train run")
    parser.add_argument("--full-run-optimizer", default="camegrad")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {platform.processor() or ''}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} cores)")
    config = TrainConfig(**QUICK) if args.quick else TrainConfig()
    results = {"step": bench_step(config, 3 if args.quick else args.rounds)}
    if args.full_run:
        results["full_run"] = bench_full_run(args.full_run_optimizer, args.quick)
    results["load_average_after"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
