"""The update-noise trace of a comparison (the paper's Appendix B.2).

At the end of training, with the parameters fixed, the multi-task method's output (the update
handed to AdamW) is sampled on ``count`` training minibatches (one fixed shuffled set, the same
for every method and seed; dropout and logit adjustment on, as in a training step; the method's
final state, with PRNG keys folded per minibatch), and the trace of the sample covariance
(ddof 1) of these vectors is reported over the shared leaves (the visual encoder, where the
methods act) and over all leaves. :func:`measure_noise_at_baseline` measures every noise method
at the linear run's final parameters (fresh method state), which isolates the method's own
effect from where its training ended. Each measurement is kept in the run directory
(``noise.json``, ``noise_by_method.json``) and read back by a later call.

Example:
  >>> from camegrad_jax.rrg.compare_noise import measure_noise
  >>> measure_noise(spec, 32, dataset)["trace_shared"]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from camegrad_jax.rrg import checkpoint as ckpt
from camegrad_jax.rrg.compare_plan import RunSpec
from camegrad_jax.rrg.data import RRGDataset
from camegrad_jax.rrg.diagnostics import find_multitask_state
from camegrad_jax.rrg.experiment import Setup, build_setup, update_samples
from camegrad_jax.rrg.restore import restore_run
from camegrad_jax.rrg.stats import covariance_trace

__all__ = ["NOISE_SEED", "measure_noise", "measure_noise_at_baseline"]

NOISE_SEED = 20_260_101  # Minibatch order and dropout keys of the noise samples.


def _noise_batches(dataset: RRGDataset, batch_size: int, count: int) -> list[dict[str, np.ndarray]]:
    batches = dataset.iterate_batches(
        "train", batch_size, seed=NOISE_SEED, epoch=0, shuffle=True, drop_last=True
    )
    return list(itertools.islice(batches, count))


def _shared_columns(setup: Setup) -> np.ndarray:
    """Which entries of a flattened update (``update_samples`` order) are shared leaves."""
    leaves = jax.tree.leaves(setup.params)
    mask = jax.tree.leaves(setup.shared_mask)
    return np.concatenate(
        [np.full(leaf.size, bool(shared)) for leaf, shared in zip(leaves, mask, strict=True)]
    )


def _noise_measurement(
    setup: Setup, params: Any, rest: Any, state: Any, batches: Sequence[dict[str, np.ndarray]]
) -> dict[str, Any]:
    samples = update_samples(
        setup, params, batches, rest=rest, multitask_state=state, seed=NOISE_SEED
    )
    shared = _shared_columns(setup)
    mean = samples.mean(axis=0)
    return {
        "num_minibatches": int(samples.shape[0]),
        "batch_size": int(batches[0]["labels"].shape[0]),
        "num_params": int(samples.shape[1]),
        "num_shared_params": int(shared.sum()),
        "trace_shared": covariance_trace(samples[:, shared]),
        "trace_all": covariance_trace(samples),
        "mean_update_sq_norm_shared": float(np.sum(mean[shared].astype(np.float64) ** 2)),
        "mean_update_sq_norm_all": float(np.sum(mean.astype(np.float64) ** 2)),
    }


def measure_noise(spec: RunSpec, count: int, dataset: RRGDataset) -> dict[str, Any]:
    """Noise trace of the run's method at its own final parameters and state."""
    path = spec.run_dir / "noise.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    restored = restore_run(spec.run_dir, ckpt.LATEST, dataset=dataset)
    setup = restored.setup
    batches = _noise_batches(dataset, spec.config.batch_size, count)
    state = find_multitask_state(restored.opt_state)
    noise = _noise_measurement(setup, restored.params, restored.rest, state, batches)
    noise["parameters"] = "own final"
    path.write_text(json.dumps(noise, indent=1), encoding="utf-8")
    return noise


def measure_noise_at_baseline(
    baseline: RunSpec, methods: Sequence[str], count: int, dataset: RRGDataset
) -> dict[str, dict[str, Any]]:
    """Noise trace of each method at the baseline run's final parameters (fresh states)."""
    path = baseline.run_dir / "noise_by_method.json"
    done = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    missing = [m for m in methods if m not in done]
    if missing:
        restored = restore_run(baseline.run_dir, ckpt.LATEST, dataset=dataset)
        batches = _noise_batches(dataset, baseline.config.batch_size, count)
        for method in missing:
            if method == baseline.method:  # Its own measurement: the same parameters.
                done[method] = measure_noise(baseline, count, dataset)
                continue
            setup = build_setup(restored.setup.config.replace(optimizer=method), dataset=dataset)
            noise = _noise_measurement(setup, restored.params, restored.rest, None, batches)
            noise["parameters"] = f"final parameters of {baseline.name} seed {baseline.seed}"
            done[method] = noise
        path.write_text(json.dumps(done, indent=1), encoding="utf-8")
    return {m: done[m] for m in methods}
