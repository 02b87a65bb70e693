"""DB-MTL against a NumPy re-implementation of LibMTL's `DB_MTL.backward`, and its invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps

import camegrad_jax as cg
from camegrad_jax._db_mtl import db_mtl

T, K, D = 8, 3, 6
EPS = 1e-8


def libmtl_db_mtl(grads, losses, beta, beta_sigma, shared):
    """LibMTL's `DB_MTL.backward`, step by step: the shared columns receive the balanced sum of
    the gradient buffer, the others the backward pass of Σ log(L_i + 1e-8)."""
    buffer = np.zeros((grads.shape[1], int(shared.sum())))
    updates = []
    for step, (g, loss) in enumerate(zip(grads, losses, strict=True), start=1):
        batch_grads = g / (loss + EPS)[:, None]
        buffer = batch_grads[:, shared] + beta / step**beta_sigma * (
            buffer - batch_grads[:, shared]
        )
        norms = np.linalg.norm(buffer, axis=1)
        alpha = norms.max() / (norms + EPS)
        update = batch_grads.sum(0)
        update[shared] = alpha @ buffer
        updates.append(update)
    return np.array(updates)


@pytest.mark.parametrize("seed", range(3))
def test_matches_libmtl_over_steps(seed):
    rng = np.random.default_rng(seed)
    grads, values = random_problem(rng, T, K, D)
    beta, sigma, weights = rng.uniform(0.2, 0.95), rng.uniform(0, 1), rng.uniform(0.5, 2, K)
    updates, states, _ = run_steps(
        db_mtl, grads, values, beta=beta, beta_sigma=sigma, task_weights=weights
    )
    # LibMTL on the weighted losses λ_i L_i, whose gradients are λ_i g_i.
    expected = libmtl_db_mtl(
        grads * weights[:, None], values * weights, beta, sigma, np.ones(D, bool)
    )
    assert rel_err(updates, expected) < 1e-5
    np.testing.assert_array_equal(states.count, np.arange(1, T + 1))


def test_private_leaves_receive_the_log_loss_gradient():
    rng = np.random.default_rng(3)
    grads, values = random_problem(rng, T, K, 5)
    tx = db_mtl(beta=0.7, beta_sigma=0.5, shared_mask={"trunk": True, "head": False})
    params = {"trunk": jnp.zeros(3), "head": jnp.zeros(2)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    updates = []
    for g, loss in zip(grads, values, strict=True):
        stacked = {"trunk": jnp.asarray(g[:, :3]), "head": jnp.asarray(g[:, 3:])}
        update, state = step(stacked, state, params, value=jnp.asarray(loss))
        updates.append(np.concatenate([update["trunk"], update["head"]]))
    shared = np.array([True, True, True, False, False])
    expected = libmtl_db_mtl(grads, values, 0.7, 0.5, shared)
    assert rel_err(np.array(updates), expected) < 1e-5
    assert [e.shape for e in state.estimates] == [(K, 3)]


def test_every_task_is_rescaled_to_the_largest_estimate():
    rng = np.random.default_rng(4)
    grads, values = random_problem(rng, T, K, D)
    _, states, _ = run_steps(db_mtl, grads, values)
    estimates = np.asarray(states.estimates[0][-1], np.float64)
    scaled = np.linalg.norm(states.coefficients[-1][:, None] * estimates, axis=1)
    np.testing.assert_allclose(scaled, np.linalg.norm(estimates, axis=1).max(), rtol=1e-5)


def test_loss_scales_do_not_matter():
    # Multiplying task i's loss by c_i multiplies its gradient by c_i: log-loss gradients, hence
    # the whole run, do not change.
    rng = np.random.default_rng(5)
    grads, values = random_problem(rng, T, K, D)
    factors = np.array([0.1, 1.0, 1e4])
    base, _, _ = run_steps(db_mtl, grads, values)
    scaled, _, _ = run_steps(db_mtl, grads * factors[:, None], values * factors)
    assert rel_err(scaled, base) < 1e-5


@pytest.mark.parametrize("scale", [1e-10, 1e-5, 1e5, 1e10])
def test_equivariant_in_the_gradients_scale(scale):
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, T, K, D)
    base, _, _ = run_steps(db_mtl, grads, values)
    scaled, _, _ = run_steps(db_mtl, grads * scale, values)
    assert np.all(np.isfinite(scaled))
    assert rel_err(scaled / scale, base) < 1e-5


def test_task_order_does_not_matter():
    rng = np.random.default_rng(7)
    grads, values = random_problem(rng, T, K, D)
    order = np.array([2, 0, 1])
    base, _, _ = run_steps(db_mtl, grads, values)
    permuted, _, _ = run_steps(db_mtl, grads[:, order], values[:, order])
    assert rel_err(permuted, base) < 1e-5


def test_zero_and_opposite_gradients():
    rng = np.random.default_rng(8)
    grads, values = random_problem(rng, T, K, D)
    zero, states, _ = run_steps(db_mtl, np.zeros_like(grads), values)
    np.testing.assert_array_equal(zero, 0.0)
    assert np.all(np.isfinite(states.coefficients))
    one_zero = grads.copy()
    one_zero[:, 0] = 0.0
    updates, states, _ = run_steps(db_mtl, one_zero, values)
    assert np.all(np.isfinite(updates))
    np.testing.assert_array_equal(states.coefficients[:, 0], 0.0)
    # Two opposite tasks of equal loss: their balanced estimates cancel.
    opposite = np.stack([grads[:, 0], -grads[:, 0]], axis=1)
    updates, _, _ = run_steps(db_mtl, opposite, np.ones((T, 2)))
    np.testing.assert_allclose(updates, 0.0, atol=1e-6 * np.abs(grads).max())


@pytest.mark.parametrize("bad_loss", [np.nan, -1.0])
def test_a_bad_loss_poisons_the_step_and_keeps_the_state(bad_loss):
    tx = db_mtl(num_tasks=2)
    params = jnp.zeros(2)
    grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    step = jax.jit(tx.update)
    _, state = step(grads, tx.init(params), params, value=jnp.array([1.0, 2.0]))
    updates, after = step(grads, state, params, value=jnp.array([1.0, bad_loss]))
    assert bool(jnp.all(jnp.isnan(updates)))
    for kept, before in zip(jax.tree.leaves(after[:2]), jax.tree.leaves(state[:2]), strict=True):
        np.testing.assert_array_equal(kept, before)


def test_state_is_sized_by_the_first_update():
    tx = cg.db_mtl()
    params = {"w": jnp.zeros((2, 3))}
    state = tx.init(params)
    assert state.estimates[0].shape == (0, 2, 3)
    grads = {"w": jnp.ones((4, 2, 3))}
    _, state = jax.jit(tx.update)(grads, state, params, value=jnp.ones(4))
    assert state.estimates[0].shape == (4, 2, 3) and state.coefficients.shape == (4,)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"beta": 1.0}, ValueError, "beta = 1.0"),
        ({"beta": -0.1}, ValueError, "beta"),
        ({"beta": "0.5"}, TypeError, "beta"),
        ({"beta_sigma": -1.0}, ValueError, "beta_sigma = -1.0"),
        ({"task_weights": [1.0, -1.0]}, ValueError, "task_weights"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        db_mtl(**kwargs)


def test_update_needs_the_losses():
    tx = db_mtl()
    params = jnp.zeros(2)
    with pytest.raises(ValueError, match="value=losses"):
        tx.update(jnp.eye(2), tx.init(params), params)
    with pytest.raises(ValueError, match="shape"):
        tx.update(jnp.eye(2), tx.init(params), params, value=jnp.ones(3))
