"""SDMGrad against a NumPy transcription of the official `SDMGrad.sdmgrad` (projected heavy-ball
steps on the simplex, warm-started across updates), with one gradient sample and with three;
its properties, bfloat16 and bad arguments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.gradient_method_checks import check_bfloat16, check_properties, property_batch, rel_err
from helpers.gradient_method_checks import run as run_batch
from helpers.loss_testing import random_problem, run_steps
from helpers.official_references import OfficialSDMGrad
from helpers.official_references import sdmgrad_official_run as official_run

import camegrad_jax as cg
from camegrad_jax._sdmgrad import sdmgrad

T, K, D = 6, 3, 8


def test_steps_follow_the_official_code():
    rng = np.random.default_rng(0)
    for lamda, niter in ((0.3, 20), (1.0, 3), (0.0, 7)):
        grads, _ = random_problem(rng, T, K, D)
        # The official step size, 10: the iterates jump between faces of the simplex.
        updates, states, _ = run_steps(sdmgrad, grads, lamda=lamda, niter=niter, learning_rate=10.0)
        expected_updates, expected_w = official_run(grads, lamda, niter)
        np.testing.assert_allclose(states.method_state.weights, expected_w, atol=1e-5)
        assert rel_err(updates, expected_updates) <= 1e-5
        # The official 1e-4 in the normalisation is invisible at these gradients' norms.
        _, official_w = official_run(grads, lamda, niter, eps=1e-4)
        np.testing.assert_allclose(states.method_state.weights, official_w, atol=1e-3)
        # The default step, the inverse curvature.
        updates, states, _ = run_steps(sdmgrad, grads, lamda=lamda, niter=niter)
        expected_updates, expected_w = official_run(grads, lamda, niter, learning_rate=None)
        np.testing.assert_allclose(states.method_state.weights, expected_w, atol=1e-5)
        assert rel_err(updates, expected_updates) <= 1e-5


def test_default_steps_converge_to_the_regularised_min_norm_point():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(5)
    # The same gradients at every step (the shapes of the test above: no new compilation).
    grads = np.repeat(random_problem(rng, 1, K, D)[0], T, axis=0)
    lamda = 0.3
    _, states, _ = run_steps(sdmgrad, grads, lamda=lamda, niter=100)
    gram = grads[0] @ grads[0].T
    result = scipy_optimize.minimize(
        lambda w: 0.5 * w @ gram @ w + lamda * w @ gram.mean(axis=1),
        np.ones(K) / K,
        bounds=[(0, 1)] * K,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    np.testing.assert_allclose(states.method_state.weights[-1], result.x, atol=1e-4)


def test_three_samples_step_the_weights_on_the_cross_gram():
    rng = np.random.default_rng(1)
    zeta, xi1, xi2 = (random_problem(rng, 2, K, D)[0] for _ in range(3))
    params = {"w": jnp.zeros(D)}
    tx = cg.sdmgrad(0.3, 20, learning_rate=10.0, num_tasks=K)
    update = jax.jit(tx.update)
    state = tx.init(params)
    official = OfficialSDMGrad(K, 0.3, 20)  # the official step size, to compare them
    for t in range(2):
        samples = ({"w": jnp.asarray(xi1[t])}, {"w": jnp.asarray(xi2[t])})
        updates, state = update(
            {"w": jnp.asarray(zeta[t])}, state, params, weight_gradients=samples
        )
        expected, w = official.step(zeta[t], xi1[t], xi2[t])
        np.testing.assert_allclose(state.method_state.weights, w, atol=1e-5)
        assert rel_err(updates["w"], expected) <= 1e-5
    with pytest.raises(ValueError, match="`weight_gradients`"):
        tx.update({"w": jnp.asarray(zeta[0])}, state, params, weight_gradients=(samples[0],))


def test_properties():
    batch = property_batch(np.random.default_rng(2), K, 16)
    updates, state = run_batch(sdmgrad, batch.grads, hyper={"lamda": 0.3, "niter": np.int32(20)})
    check_properties(updates, batch, degree=1)
    # λ → ∞ leaves the mean: K · g0 = Σ h_i.
    large, _ = run_batch(sdmgrad, batch.grads, hyper={"lamda": 1e8, "niter": np.int32(20)})
    np.testing.assert_allclose(large, batch.grads.sum(axis=1), rtol=1e-5, atol=1e-6)
    weights = np.asarray(state.method_state.weights)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(weights >= 0)


def test_bfloat16():
    grads = np.stack([random_problem(np.random.default_rng(3), 1, K, D)[0][0] for _ in range(4)])
    check_bfloat16(sdmgrad, grads, hyper={"lamda": 0.3, "niter": np.int32(20)})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lamda": -0.1}, ValueError, "`lamda`"),
        ({"lamda": float("inf")}, ValueError, "`lamda`"),
        ({"lamda": "0.3"}, TypeError, "`lamda`"),
        ({"niter": 0}, ValueError, "`niter`"),
        ({"niter": 2.5}, ValueError, "`niter`"),
        ({"learning_rate": 0.0}, ValueError, "`learning_rate`"),
        ({"task_weights": [1.0, -2.0]}, ValueError, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        cg.sdmgrad(**kwargs)
