"""MGDA against brute force over the simplex (K = 2) and SciPy's SLSQP (K > 2), its gradient
normalisations, warm start and properties."""

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
    run,
)

import camegrad_jax as cg
from camegrad_jax._mgda import mgda

DIM = 16


def brute_force_two(h):
    """Min-norm point of the segment [h_1, h_2] on a grid of 200001 weights, and the grid step's
    effect on the point (‖h_1 − h_2‖ / 200000)."""
    w = np.linspace(0.0, 1.0, 200001)[:, None]
    points = w * h[0] + (1 - w) * h[1]
    best = points[np.argmin(np.sum(points**2, axis=1))]
    return best, np.linalg.norm(h[0] - h[1]) / 200000


def slsqp_min_norm(h):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    gram = h @ h.T
    k = len(h)
    result = scipy_optimize.minimize(
        lambda w: w @ gram @ w,
        np.full(k, 1 / k),
        jac=lambda w: 2 * gram @ w,
        method="SLSQP",
        bounds=[(0, 1)] * k,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return result.x @ h


@functools.cache
def four_tasks():
    rng = np.random.default_rng(1)
    properties = property_batch(rng, 4, DIM)
    random = batch_of(rng, 16, 4, DIM)
    n = len(properties.names)
    weights = np.concatenate([np.ones((n, 4)), rng.uniform(0.5, 4, (16, 4))])
    grads = np.concatenate([properties.grads, random])
    updates, state = run(mgda, grads, task_weights=weights)
    return properties, updates[:n], random, weights[n:], updates[n:], grads, weights, state


def test_two_tasks_match_brute_force():
    # Two gradients listed twice each: the convex hull, hence the min-norm point, is the segment
    # between them (this runs in the four-task compilation, with a rank-deficient Gram matrix).
    rng = np.random.default_rng(5)
    pairs = batch_of(rng, 12, 2, DIM)
    updates, _ = run(mgda, np.concatenate([pairs, pairs[:, ::-1]], axis=1))
    for h, update in zip(pairs, updates, strict=True):
        best, resolution = brute_force_two(h)
        assert np.linalg.norm(update - best) <= resolution + 1e-5 * np.linalg.norm(best)
        assert update @ update <= best @ best * (1 + 1e-5)


def test_many_tasks_match_slsqp():
    _, _, random, weights, updates, *_ = four_tasks()
    for grads, w, update in zip(random, weights, updates, strict=True):
        h = w[:, None] * grads
        expected = slsqp_min_norm(h)
        assert update @ update <= expected @ expected * (1 + 1e-5) + 1e-12
        assert np.linalg.norm(update - expected) <= 1e-4 * np.linalg.norm(h, axis=1).max()


def test_many_tasks_properties_and_warm_start():
    properties, updates, *_, grads, weights, state = four_tasks()
    check_properties(updates, properties, non_conflicting=True)
    # The min-norm point improves every task by at least its squared norm; a zero task makes
    # the point Pareto-stationary.
    for grads_i, update in zip(properties.grads, updates, strict=True):
        assert np.all(grads_i @ update >= update @ update - 1e-5 * np.sum(grads_i**2))
    np.testing.assert_array_equal(updates[properties.index("one_zero")], 0.0)
    assert np.all(np.asarray(state.method_state.duality_gap) <= 1e-6)
    np.testing.assert_allclose(
        np.sum(np.asarray(state.method_state.dual_weights), 1), 1.0, rtol=1e-6
    )
    # Started from last step's weights, the exact polish certifies the optimum at once.
    again, state2 = run(mgda, grads, task_weights=weights, state=state)
    random = slice(len(properties.names), None)
    np.testing.assert_array_equal(np.asarray(state2.method_state.solver_iterations)[random], 0)
    np.testing.assert_allclose(again[random], four_tasks()[4], rtol=1e-5, atol=1e-6)


def normalised_reference(h, normalization, losses):
    norms = np.linalg.norm(h, axis=1)
    normalisers = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    h_hat = h / normalisers[:, None]
    # The min-norm weights of the normalised gradients, applied to the unnormalised ones.
    w = np.linspace(0.0, 1.0, 200001)
    norms_sq = np.sum((w[:, None] * h_hat[0] + (1 - w[:, None]) * h_hat[1]) ** 2, axis=1)
    best = w[np.argmin(norms_sq)]
    return best * h[0] + (1 - best) * h[1], np.linalg.norm(h[0] - h[1]) / 200000


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_normalizations(normalization):
    # Run eagerly, problem by problem: `normalization` is static, and a batched compilation of
    # each would cost more than the few eager updates; the normalisations share the dual
    # solver's one compilation.
    rng = np.random.default_rng(2)
    grads = batch_of(rng, 8, 2, DIM)
    weights = rng.uniform(0.5, 4, (8, 2))
    losses = rng.uniform(0.1, 5.0, (8, 2))
    params = jnp.zeros(DIM)
    for g, w, loss in zip(grads, weights, losses, strict=True):
        tx = mgda(normalization=normalization, task_weights=w)
        extra = {} if normalization == "l2" else {"value": jnp.asarray(loss, jnp.float32)}
        update, _ = tx.update(jnp.asarray(g, jnp.float32), tx.init(params), params, **extra)
        h = w[:, None] * g
        expected, resolution = normalised_reference(h, normalization, w * loss)
        assert np.linalg.norm(update - expected) <= resolution + 1e-5 * np.linalg.norm(expected)


def test_loss_normalizations_need_values():
    tx = mgda(normalization="loss+", num_tasks=2)
    grads, params = jnp.ones((2, 3)), jnp.zeros(3)
    with pytest.raises(ValueError, match="value"):
        tx.update(grads, tx.init(params), params)
    with pytest.raises(ValueError, match="one loss per task"):
        tx.update(grads, tx.init(params), params, value=jnp.ones(3))


def test_bfloat16():
    check_bfloat16(mgda, batch_of(np.random.default_rng(3), 4, 4, DIM))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"normalization": "norm"}, "`normalization`"),
        ({"solver": "slsqp"}, "`solver`"),
        ({"solver_maxiter": 0}, "`solver_maxiter`"),
        ({"solver_tol": -1e-6}, "`solver_tol`"),
        ({"task_weights": [1.0, 0.0]}, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mgda(**kwargs)


def test_gram_level_weighting_is_the_min_norm_point():
    rng = np.random.default_rng(11)
    for _ in range(3):
        grads = rng.normal(size=(3, 8))
        result = cg.mgda_weights(jnp.asarray(grads @ grads.T, jnp.float32))
        expected = slsqp_min_norm(grads)
        update = np.asarray(result.coefficients, np.float64) @ grads
        assert np.linalg.norm(update - expected) <= 1e-4 * np.linalg.norm(expected)
    with pytest.raises(ValueError, match="needs the task losses"):
        cg.mgda_weights(jnp.eye(2), normalization="loss")
