"""MoCo against NumPy re-implementations of LibMTL's `MoCo.backward` and of the paper's
Algorithm 1, torchjd's check of the tracking step, and its invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps

from camegrad_jax._moco import moco

T, K, D = 8, 3, 6
LIBMTL = {"gradient_normalization": "loss", "weights_update": "softmax"}
PAPER = {"gradient_normalization": "none", "weights_update": "projection"}


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def project_onto_simplex(v):
    """Euclidean projection onto the simplex by sorting (Held, Wolfe & Crowder, 1974)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1
    index = np.arange(1, len(v) + 1)
    rho = index[u - cumulative / index > 0][-1]
    return np.maximum(v - cumulative[rho - 1] / rho, 0.0)


def reference(grads, losses, hyper, *, normalise, simplex_map, shared=None):
    """LibMTL's `MoCo.backward` (normalise=True, softmax) or Algorithm 1 (False, projection),
    step by step; the columns outside `shared` receive the plain sum of the task gradients."""
    beta, beta_sigma, gamma, gamma_sigma, rho = hyper
    shared = np.ones(grads.shape[2], bool) if shared is None else shared
    k = grads.shape[1]
    y = np.zeros((k, int(shared.sum())))
    weights = np.full(k, 1 / k)
    updates, history = [], []
    for step, (g, loss) in enumerate(zip(grads, losses, strict=True), start=1):
        target = g[:, shared]
        if normalise:
            target = target / np.linalg.norm(target, axis=1, keepdims=True) * loss[:, None]
        y = y - beta / step**beta_sigma * (y - target)
        moved = weights - gamma / step**gamma_sigma * (y @ y.T + rho * np.eye(k)) @ weights
        weights = softmax(moved) if simplex_map == "softmax" else project_onto_simplex(moved)
        update = g.sum(0)
        update[shared] = y.T @ weights
        updates.append(update)
        history.append(weights)
    return np.array(updates), np.array(history)


def random_hyper(rng):
    return (
        rng.uniform(0.2, 1.0),
        rng.uniform(0, 1),
        rng.uniform(0.05, 0.5),
        rng.uniform(0, 1),
        rng.uniform(0, 0.2),
    )


def run(grads, values, hyper, static, **extra):
    names = ("beta", "beta_sigma", "gamma", "gamma_sigma", "rho")
    return run_steps(
        moco, grads, values, static=static, **dict(zip(names, hyper, strict=True)), **extra
    )


@pytest.mark.parametrize("seed", range(2))
def test_matches_libmtl_over_steps(seed):
    rng = np.random.default_rng(seed)
    grads, values = random_problem(rng, T, K, D)
    hyper = random_hyper(rng)
    updates, states, _ = run(grads, values, hyper, LIBMTL)
    expected, weights = reference(grads, values, hyper, normalise=True, simplex_map="softmax")
    assert rel_err(updates, expected) < 1e-5
    np.testing.assert_allclose(states.weighting.method_state.weights, weights, atol=1e-6)


@pytest.mark.parametrize("seed", range(2))
def test_matches_the_paper_algorithm_with_task_weights(seed):
    rng = np.random.default_rng(10 + seed)
    grads, values = random_problem(rng, T, K, D)
    hyper, task_weights = random_hyper(rng), rng.uniform(0.5, 2, K)
    updates, states, _ = run(grads, values, hyper, PAPER, task_weights=task_weights)
    weighted = grads * task_weights[:, None]
    expected, weights = reference(weighted, values, hyper, normalise=False, simplex_map="proj")
    assert rel_err(updates, expected) < 1e-5
    np.testing.assert_allclose(states.weighting.method_state.weights, weights, atol=1e-6)


def test_private_leaves_receive_the_sum_of_the_gradients():
    rng = np.random.default_rng(2)
    grads, values = random_problem(rng, 4, K, 5)
    tx = moco(**LIBMTL, shared_mask={"trunk": True, "head": False})
    params = {"trunk": jnp.zeros(3), "head": jnp.zeros(2)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    updates = []
    for g, loss in zip(grads, values, strict=True):
        stacked = {"trunk": jnp.asarray(g[:, :3]), "head": jnp.asarray(g[:, 3:])}
        update, state = step(stacked, state, params, value=jnp.asarray(loss))
        updates.append(np.concatenate([update["trunk"], update["head"]]))
    shared = np.array([True, True, True, False, False])
    expected, _ = reference(
        grads,
        values,
        (0.5, 0.5, 0.1, 0.5, 0.0),
        normalise=True,
        simplex_map="softmax",
        shared=shared,
    )
    assert rel_err(np.array(updates), expected) < 1e-5


def test_first_estimate_is_half_the_gradients_as_in_torchjd():
    # torchjd's `test_y_getter_returns_current_moving_gradient_estimate`: with the default
    # β = 0.5, the first estimate is 0.5 J.
    rng = np.random.default_rng(3)
    grads, values = random_problem(rng, T, K, D)
    _, states, _ = run(grads, values, (0.5, 0.5, 0.1, 0.5, 0.0), PAPER)
    np.testing.assert_allclose(states.estimates[0][0], 0.5 * grads[0], rtol=1e-6)


def test_loss_normalisation_makes_the_gradients_scale_irrelevant():
    rng = np.random.default_rng(4)
    grads, values = random_problem(rng, T, K, D)
    hyper = random_hyper(rng)
    base, states, _ = run(grads, values, hyper, {})
    np.testing.assert_allclose(states.weighting.method_state.weights.sum(1), 1.0, rtol=1e-6)
    assert np.all(states.weighting.method_state.weights >= 0)
    for scale in (1e-10, 1e-5, 1e5, 1e10):
        scaled, _, _ = run(grads * scale, values, hyper, {})
        assert rel_err(scaled, base) < 1e-5, scale


def test_task_order_does_not_matter():
    rng = np.random.default_rng(5)
    grads, values = random_problem(rng, T, K, D)
    hyper = random_hyper(rng)
    order = np.array([2, 0, 1])
    base, _, _ = run(grads, values, hyper, {})
    permuted, _, _ = run(grads[:, order], values[:, order], hyper, {})
    assert rel_err(permuted, base) < 1e-5


def test_zero_gradients_and_a_non_finite_step():
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, T, K, D)
    hyper = random_hyper(rng)
    zero, states, _ = run(np.zeros_like(grads), values, hyper, {})
    np.testing.assert_array_equal(zero, 0.0)
    assert np.all(np.isfinite(states.weighting.method_state.weights))
    # A NaN loss: that step's update is NaN, and the state goes on as if it had not happened.
    poisoned = values.copy()
    poisoned[3, 1] = np.nan
    updates, states, _ = run(grads, poisoned, hyper, {})
    assert np.all(np.isnan(updates[3]))
    kept_state = (states.estimates, states.count, states.weighting.method_state)
    for leaf in jax.tree.leaves(kept_state):
        np.testing.assert_array_equal(leaf[3], leaf[2])
    kept = np.delete(np.arange(T), 3)
    expected, _ = reference(grads[kept], values[kept], hyper, normalise=True, simplex_map="proj")
    assert rel_err(updates[kept], expected) < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"beta": -0.1}, ValueError, "beta = -0.1"),
        ({"gamma_sigma": -1.0}, ValueError, "gamma_sigma"),
        ({"rho": "0"}, TypeError, "rho"),
        ({"gradient_normalization": "l2"}, ValueError, "gradient_normalization"),
        ({"weights_update": "exp"}, ValueError, "weights_update"),
        ({"task_weights": [0.0, 1.0]}, ValueError, "task_weights"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        moco(**kwargs)


def test_loss_normalisation_needs_the_losses():
    tx = moco()
    params = jnp.zeros(2)
    with pytest.raises(ValueError, match="value=losses"):
        tx.update(jnp.eye(2), tx.init(params), params)
