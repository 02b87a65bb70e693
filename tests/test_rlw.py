"""Random Loss Weighting: the sampled weights' law, the simplex, determinism given the seed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.loss_testing import rel_err, run_steps

from camegrad_jax._rlw import rlw

T, K, D = 400, 3, 4


def weights_of(distribution, seed=0, dtype=jnp.float32):
    """T steps' weights and updates, with g_i the i-th unit vector (one shape: few compilations)."""
    grads = np.tile(np.eye(K, D), (T, 1, 1))
    updates, states, _ = run_steps(
        rlw, grads, dtype=dtype, static={"distribution": distribution}, seed=seed
    )
    return np.asarray(states.coefficients, np.float64), np.asarray(updates, np.float64)


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_weights_lie_on_the_simplex_and_are_the_update(distribution):
    coefficients, updates = weights_of(distribution)
    assert np.all(coefficients > 0)
    np.testing.assert_allclose(coefficients.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(updates[:, :K], coefficients, rtol=1e-6)
    # Exchangeable tasks: every task's mean weight is 1/K.
    np.testing.assert_allclose(coefficients.mean(0), 1 / K, atol=0.03)


def test_normal_draws_have_the_law_of_the_paper():
    # softmax(ε) with ε ~ N(0, I): log(w_i / w_j) = ε_i − ε_j ~ N(0, 2).
    coefficients, _ = weights_of("normal")
    differences = np.log(coefficients[:, 0] / coefficients[:, 1])
    assert abs(np.mean(differences)) < 0.2
    assert abs(np.var(differences) - 2.0) < 0.35


@pytest.mark.parametrize("distribution", ["uniform", "dirichlet"])
def test_bounded_draws_give_bounded_log_ratios(distribution):
    # Samples in (0, 1): log(w_i / w_j) = ε_i − ε_j lies in (−1, 1).
    coefficients, _ = weights_of(distribution)
    differences = np.log(coefficients[:, 0] / coefficients[:, 1])
    assert np.all(np.abs(differences) < 1)
    if distribution == "uniform":
        # ε_i − ε_j of two U(0, 1) has the triangular law, of variance 1/6.
        assert abs(np.var(differences) - 1 / 6) < 0.03


def test_matches_the_documented_key_schedule():
    coefficients, _ = weights_of("normal", seed=7)
    key = jax.random.PRNGKey(7)
    for t in range(3):
        key, draw = jax.random.split(key)
        expected = jax.nn.softmax(jax.random.normal(draw, (K,)))
        np.testing.assert_allclose(coefficients[t], expected, rtol=1e-6)


def test_deterministic_given_the_seed():
    first, _ = weights_of("normal", seed=3)
    again, _ = weights_of("normal", seed=3)
    other, _ = weights_of("normal", seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert not np.allclose(first[0], first[1])  # fresh weights at every step


def test_task_weights_multiply_the_random_weights():
    grads = np.tile(np.eye(K, D), (T, 1, 1))
    lam = np.array([1.0, 2.0, 4.0])
    _, states, _ = run_steps(
        rlw, grads, static={"distribution": "normal"}, seed=0, task_weights=lam
    )
    coefficients, _ = weights_of("normal")
    np.testing.assert_allclose(states.coefficients, coefficients * lam, rtol=1e-6)


def test_zero_gradients_and_bfloat16():
    grads = np.zeros((T, K, D))
    updates, _, _ = run_steps(rlw, grads, static={"distribution": "normal"}, seed=0)
    np.testing.assert_array_equal(updates, 0.0)
    coefficients, updates = weights_of("normal", dtype=jnp.bfloat16)
    expected, _ = weights_of("normal")
    assert rel_err(coefficients, expected) < 1e-6  # the draws do not depend on the dtype
    assert rel_err(updates[:, :K], expected) < 1e-2


def test_seed_can_be_injected():
    tx = optax.inject_hyperparams(rlw)(seed=5, num_tasks=K)
    params = jnp.zeros(D)
    _, state = jax.jit(tx.update)(jnp.eye(K, D), tx.init(params), params)
    expected, _ = weights_of("normal", seed=5)
    np.testing.assert_allclose(state.inner_state.coefficients, expected[0], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "bernoulli"}, "`distribution`"),
        ({"seed": 1.5}, "`seed`"),
        ({"seed": True}, "`seed`"),
        ({"task_weights": [1.0, -1.0]}, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rlw(**kwargs)
