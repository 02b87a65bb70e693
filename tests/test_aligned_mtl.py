"""Aligned-MTL against an SVD of the stacked gradients in parameter space, and its properties."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from helpers.gradient_method_checks import (
    batch_of,
    check_bfloat16,
    check_properties,
    property_batch,
    rel_err,
    run,
)

from camegrad_jax._aligned_mtl import aligned_mtl

DIM = 16
EPS32 = float(np.finfo(np.float32).eps)


def numpy_aligned_mtl(h, scale_mode="min"):
    """H = U S Vᵀ (thin SVD, columns h_i): the aligned gradients are σ U Vᵀ on the non-zero
    singular values, with σ² = min / lower median / mean of the kept S², summed over tasks."""
    u, s, vt = np.linalg.svd(h.T, full_matrices=False)
    squares = s**2
    kept = squares > squares.max() * len(h) * EPS32
    squares = np.sort(squares[kept])
    reference = {
        "min": squares[0],
        "median": squares[(len(squares) - 1) // 2],  # torch.median: the lower median
        "rmse": squares.mean(),
    }[scale_mode]
    aligned = np.sqrt(reference) * u[:, kept] @ vt[kept]
    return aligned.sum(axis=1)


@functools.cache
def three_tasks():
    rng = np.random.default_rng(0)
    properties = property_batch(rng, 3, DIM)
    random = batch_of(rng, 20, 3, DIM)
    weights = np.concatenate([np.ones((len(properties.names), 3)), rng.uniform(0.5, 4, (20, 3))])
    updates, state = run(
        aligned_mtl, np.concatenate([properties.grads, random]), task_weights=weights
    )
    n = len(properties.names)
    return properties, updates[:n], random, weights[n:], updates[n:]


def test_matches_svd_reference():
    _, _, random, weights, updates = three_tasks()
    for grads, w, update in zip(random, weights, updates, strict=True):
        assert rel_err(update, numpy_aligned_mtl(w[:, None] * grads)) <= 1e-4


def test_properties_and_rank_deficiency():
    properties, updates, _, _, _ = three_tasks()
    check_properties(updates, properties)
    for name in ("duplicate", "one_zero"):
        i = properties.index(name)
        assert rel_err(updates[i], numpy_aligned_mtl(properties.grads[i])) <= 1e-4, name


@pytest.mark.parametrize("scale_mode", ["median", "rmse"])
def test_other_scale_modes(scale_mode):
    # Four tasks: the lower median of an even number of singular values, and of three when one
    # task duplicates another.
    grads = batch_of(np.random.default_rng(1), 6, 4, DIM)
    grads[0, 3] = grads[0, 1]
    updates, _ = run(aligned_mtl, grads, scale_mode=scale_mode)
    for g, update in zip(grads, updates, strict=True):
        assert rel_err(update, numpy_aligned_mtl(g, scale_mode)) <= 1e-4


def test_bfloat16():
    check_bfloat16(aligned_mtl, batch_of(np.random.default_rng(2), 4, 3, DIM))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale_mode": "max"}, "`scale_mode`"),
        ({"task_weights": [[1.0]]}, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        aligned_mtl(**kwargs)
