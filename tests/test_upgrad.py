"""UPGrad against projections computed in parameter space by SciPy's NNLS, and its properties."""

from __future__ import annotations

import functools

import jax.numpy as jnp
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

from camegrad_jax._upgrad import upgrad

DIM = 16


def numpy_upgrad(h, reduction="mean"):
    """Σ_i p_i Π(h_i), Π(v) = v + Hᵀμ with μ = argmin_{μ ≥ 0} ‖v + Hᵀμ‖ (the projection's dual)."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    total = np.zeros(h.shape[1])
    for v in h:
        mu, _ = scipy_optimize.nnls(h.T, -v)
        total += v + h.T @ mu
    return total / len(h) if reduction == "mean" else total


@functools.cache
def three_tasks():
    """One compiled run: the property batch, 15 random problems with task weights, and 8 pairs
    of gradients with a zero third task."""
    rng = np.random.default_rng(0)
    properties = property_batch(rng, 3, DIM)
    random = batch_of(rng, 15, 3, DIM)
    pairs = np.concatenate([batch_of(rng, 8, 2, DIM), np.zeros((8, 1, DIM))], axis=1)
    n = len(properties.names)
    weights = np.concatenate([np.ones((n, 3)), rng.uniform(0.5, 4, (15, 3)), np.ones((8, 3))])
    grads = np.concatenate([properties.grads, random, pairs])
    updates, _ = run(upgrad, grads, task_weights=weights)
    return (
        properties,
        updates[:n],
        random,
        weights[n : n + 15],
        updates[n : n + 15],
        pairs,
        updates[n + 15 :],
    )


def test_matches_nnls_projections():
    _, _, random, weights, updates, _, _ = three_tasks()
    for grads, w, update in zip(random, weights, updates, strict=True):
        h = w[:, None] * grads
        assert rel_err(update, numpy_upgrad(h)) <= 1e-5
        assert np.all(h @ update >= -1e-6 * np.linalg.norm(h, axis=1) * np.linalg.norm(update))


def test_properties():
    properties, updates, *_ = three_tasks()
    check_properties(updates, properties, non_conflicting=True)
    for name in ("duplicate", "one_zero"):
        i = properties.index(name)
        assert rel_err(updates[i], numpy_upgrad(properties.grads[i])) <= 1e-5


def pcgrad_pair(g1, g2):
    inner = min(g1 @ g2, 0.0)
    return (g1 - inner / (g2 @ g2) * g2) + (g2 - inner / (g1 @ g1) * g1)


def test_two_projections_are_pcgrad():
    # With two tasks, projecting each gradient onto the dual cone is PCGrad's projection; a zero
    # third task adds no constraint and projects to 0, so the mean is a third of PCGrad's sum.
    *_, pairs, updates = three_tasks()
    for (g1, g2, _), update in zip(pairs, updates, strict=True):
        assert rel_err(3 * update, pcgrad_pair(g1, g2)) <= 1e-5


def test_sum_reduction():
    # Eagerly, problem by problem: `reduction` is static, and a batched compilation would cost
    # more than these few updates.
    grads = batch_of(np.random.default_rng(1), 6, 2, DIM)
    tx, params = upgrad(reduction="sum", num_tasks=2), jnp.zeros(DIM)
    for g1, g2 in grads:
        grads_pair = jnp.asarray(np.stack([g1, g2]), jnp.float32)
        update, _ = tx.update(grads_pair, tx.init(params), params)
        assert rel_err(update, pcgrad_pair(g1, g2)) <= 1e-5
        assert rel_err(update, numpy_upgrad(np.stack([g1, g2]), "sum")) <= 1e-5


def test_bfloat16():
    check_bfloat16(upgrad, batch_of(np.random.default_rng(2), 4, 3, DIM))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduction": "max"}, "`reduction`"),
        ({"task_weights": [1.0, 0.0]}, "`task_weights`"),
        ({"num_tasks": -2}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        upgrad(**kwargs)
