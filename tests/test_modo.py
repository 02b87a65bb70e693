"""MoDo against a NumPy transcription of the official λ step (one sample, and two through
`weight_gradients`), its limits in γ, task order, degenerate inputs, bfloat16 and bad
arguments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.gradient_method_checks import check_bfloat16, property_batch, rel_err
from helpers.gradient_method_checks import run as run_batch
from helpers.loss_testing import random_problem, run_steps
from helpers.official_references import modo_official_run as official_run

import camegrad_jax as cg
from camegrad_jax._modo import modo

T, K, D = 6, 3, 8


def test_steps_follow_the_official_code():
    rng = np.random.default_rng(0)
    for gamma, rho in ((0.1, 0.0), (0.01, 0.1), (1.0, 1.0)):
        grads, _ = random_problem(rng, T, K, D)
        task_weights = rng.uniform(0.5, 2.0, K)
        updates, states, _ = run_steps(modo, grads, gamma=gamma, rho=rho, task_weights=task_weights)
        expected, lambdas = official_run(grads, gamma, rho, task_weights=task_weights)
        np.testing.assert_allclose(states.method_state.weights, lambdas, atol=1e-5)
        np.testing.assert_allclose(states.coefficients, lambdas * task_weights, atol=1e-5)
        assert rel_err(updates, expected) <= 1e-5


def test_two_samples_step_lambda_on_their_cross_gram():
    rng = np.random.default_rng(1)
    zeta, xi1, xi2 = (random_problem(rng, 2, K, D)[0] for _ in range(3))
    params = {"w": jnp.zeros(D)}
    tx = cg.modo(0.05, 0.1, num_tasks=K)
    update = jax.jit(tx.update)
    state = tx.init(params)
    expected, lambdas = official_run(zeta, 0.05, 0.1, xi1, xi2)
    for t in range(2):
        samples = ({"w": jnp.asarray(xi1[t])}, {"w": jnp.asarray(xi2[t])})
        updates, state = update(
            {"w": jnp.asarray(zeta[t])}, state, params, weight_gradients=samples
        )
        np.testing.assert_allclose(state.method_state.weights, lambdas[t], atol=1e-5)
        assert rel_err(updates["w"], expected[t]) <= 1e-5
    with pytest.raises(ValueError, match="`weight_gradients`"):
        tx.update({"w": jnp.asarray(zeta[0])}, state, params, weight_gradients=samples[0])


def test_limits_order_and_degenerate_inputs():
    batch = property_batch(np.random.default_rng(2), K, 16)
    grads = batch.grads
    # γ = 0 keeps λ = 1/K: the mean of the gradients.
    mean, _ = run_batch(modo, grads, hyper={"gamma": 0.0, "rho": 0.0})
    np.testing.assert_allclose(mean, grads.mean(axis=1), rtol=1e-5, atol=1e-30)
    updates, state = run_batch(modo, grads, hyper={"gamma": 0.1, "rho": 0.1})
    assert np.all(np.isfinite(updates))
    weights = np.asarray(state.method_state.weights)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(weights >= 0)
    permuted = updates[batch.index("permuted")]
    assert rel_err(permuted, updates[batch.index("base")]) <= 1e-5
    np.testing.assert_array_equal(updates[batch.index("zero")], 0.0)
    # Tiny gradients leave λ where it was: γ G is negligible (G is not rescaled).
    tiny = weights[batch.index("scale 1e-10")]
    np.testing.assert_allclose(tiny, 1.0 / K, rtol=1e-5)


def test_bfloat16():
    grads = np.stack([random_problem(np.random.default_rng(3), 1, K, D)[0][0] for _ in range(4)])
    check_bfloat16(modo, grads, hyper={"gamma": 0.1, "rho": 0.1})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"gamma": -0.1}, ValueError, "`gamma`"),
        ({"gamma": float("nan")}, ValueError, "`gamma`"),
        ({"gamma": "0.1"}, TypeError, "`gamma`"),
        ({"rho": -1.0}, ValueError, "`rho`"),
        ({"task_weights": [1.0, 0.0]}, ValueError, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        cg.modo(**kwargs)
