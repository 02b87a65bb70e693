"""Uncertainty weighting against a NumPy re-implementation of its update rule, and its numerics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps

from camegrad_jax._uncertainty_weighting import uncertainty_weighting


def reference(grads, values, learning_rate, init_log_var, task_weights):
    """Kendall et al.'s objective Σ e^{-s} λL + s: the parameters' gradient, and SGD on s."""
    s = np.full(grads.shape[1], init_log_var, np.float64)
    updates, log_vars = [], []
    for g, loss in zip(grads, values, strict=True):
        weighted = task_weights * loss
        updates.append((np.exp(-s) * task_weights) @ g)
        s = s - learning_rate * (1 - np.exp(-s) * weighted)
        log_vars.append(s)
    return np.array(updates), np.array(log_vars)


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_over_steps(seed):
    rng = np.random.default_rng(seed)
    grads, values = random_problem(rng, 12, 3, 7)
    lr, init, weights = rng.uniform(0.01, 0.5), rng.uniform(-1, 1), rng.uniform(0.5, 3, 3)
    updates, states, _ = run_steps(
        uncertainty_weighting,
        grads,
        values,
        learning_rate=lr,
        init_log_var=init,
        task_weights=weights,
    )
    expected_updates, expected_s = reference(grads, values, lr, init, weights)
    assert rel_err(updates, expected_updates) < 1e-5
    np.testing.assert_allclose(states.method_state.log_vars, expected_s, rtol=1e-5, atol=1e-6)


def test_hand_computed_step():
    tx = uncertainty_weighting(learning_rate=0.5, init_log_var=np.log(2.0), num_tasks=2)
    params = jnp.zeros(2)
    grads = jnp.array([[2.0, 0.0], [0.0, 4.0]])
    updates, state = tx.update(grads, tx.init(params), params, value=jnp.array([4.0, 1.0]))
    np.testing.assert_allclose(updates, [1.0, 2.0], rtol=1e-6)  # e^{-s} = 1/2
    # ∂/∂s = 1 - L/2 = (-1, 0.5): s moves to log 2 + (0.5, -0.25).
    np.testing.assert_allclose(
        state.method_state.log_vars, np.log(2.0) + np.array([0.5, -0.25]), rtol=1e-6
    )


def test_log_variances_converge_to_log_losses():
    values = np.tile([[0.2, 3.0, 50.0]], (200, 1))
    grads = np.zeros((200, 3, 2))
    _, _, final = run_steps(uncertainty_weighting, grads, values, learning_rate=0.3)
    np.testing.assert_allclose(final.method_state.log_vars, np.log(values[0]), rtol=1e-4)


@pytest.mark.parametrize("scale", [1e-10, 1e-4, 1.0, 1e4, 1e10])
def test_extreme_scales_stay_finite(scale):
    rng = np.random.default_rng(1)
    grads, values = random_problem(rng, 4, 3, 5)
    updates, states, _ = run_steps(uncertainty_weighting, grads * scale, values * scale)
    assert np.all(np.isfinite(updates))
    assert np.all(np.isfinite(states.method_state.log_vars))


def test_zero_gradients_and_zero_losses():
    updates, states, _ = run_steps(
        uncertainty_weighting, np.zeros((3, 2, 4)), np.zeros((3, 2)), learning_rate=0.1
    )
    np.testing.assert_array_equal(updates, 0.0)
    # ∂/∂s = 1 where L = 0: s falls by the step size each step, and stays finite.
    np.testing.assert_allclose(states.method_state.log_vars[:, 0], [-0.1, -0.2, -0.3], rtol=1e-6)


def test_bfloat16_keeps_dtypes():
    rng = np.random.default_rng(2)
    grads, values = random_problem(rng, 2, 2, 6)
    updates, states, _ = run_steps(uncertainty_weighting, grads, values, dtype=jnp.bfloat16)
    assert updates.dtype == jnp.bfloat16
    assert states.method_state.log_vars.dtype == jnp.float32
    expected, _ = reference(
        np.asarray(jnp.asarray(grads, jnp.bfloat16), float),
        np.asarray(jnp.asarray(values, jnp.bfloat16), float),
        0.01,
        0.0,
        np.ones(2),
    )
    assert rel_err(updates, expected) < 1e-2


def test_non_finite_losses_keep_state_and_poison_update():
    tx = uncertainty_weighting(num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(
        jnp.ones((2, 3)), state, params, value=jnp.array([1.0, jnp.nan])
    )
    assert np.all(np.isnan(updates))
    np.testing.assert_array_equal(new_state.method_state.log_vars, state.method_state.log_vars)


def test_shared_mask_limits_the_weights_to_shared_leaves():
    tx = uncertainty_weighting(
        init_log_var=np.log(4.0), task_weights=[1.0, 2.0], shared_mask={"a": True, "b": False}
    )
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.eye(2), "b": jnp.eye(2)}
    updates, _ = tx.update(grads, tx.init(params), params, value=jnp.ones(2))
    np.testing.assert_allclose(updates["a"], [0.25, 0.5])  # λ e^{-s}
    np.testing.assert_allclose(updates["b"], [1.0, 2.0])  # λ


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": 0.0}, "`learning_rate`"),
        ({"learning_rate": -1.0}, "`learning_rate`"),
        ({"learning_rate": float("nan")}, "`learning_rate`"),
        ({"init_log_var": float("inf")}, "`init_log_var`"),
        ({"task_weights": [1.0, -1.0]}, "`task_weights`"),
        ({"num_tasks": 0}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        uncertainty_weighting(**kwargs)


def test_error_names_the_value():
    with pytest.raises(ValueError, match=r"learning_rate = -2"):
        uncertainty_weighting(learning_rate=-2)


def test_missing_or_misshapen_value():
    tx = uncertainty_weighting(num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    with pytest.raises(ValueError, match="`value=losses`"):
        tx.update(jnp.ones((2, 3)), state, params)
    with pytest.raises(ValueError, match=r"`value` with shape \(3,\)"):
        tx.update(jnp.ones((2, 3)), state, params, value=jnp.ones(3))
    with pytest.raises(ValueError, match=r"`value` with shape \(\)"):
        tx.update(jnp.ones((2, 3)), state, params, value=jnp.asarray(1.0))
