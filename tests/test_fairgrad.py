"""FairGrad: Gw = w^(−1/α) against the official SciPy least-squares solve, the fairness
conditions checked directly, the update's scaling law, degenerate inputs and bad arguments."""

from __future__ import annotations

import functools

import jax
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

from camegrad_jax._fairgrad import fairgrad, solve_fairgrad

DIM = 16
EPS32 = float(np.finfo(np.float32).eps)
ALPHAS = np.array([0.5, 1.0, 2.0, 5.0])


def hyper(alpha, solver_maxiter=50):
    # Always the same traced hyper-parameters, so that every test shares one compilation.
    return {"alpha": alpha, "solver_maxiter": np.asarray(solver_maxiter, np.int32)}


def official_weights(h, alpha):
    """The official solve (float64): SciPy's bounded least squares on Aw − (1/w)^(1/α) from
    w = 1/K, with tolerances tightened so that it converges to round-off."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    gram = h @ h.T
    start = np.ones(len(h)) / len(h)
    result = scipy_optimize.least_squares(
        lambda w: gram @ w - np.power(1 / w, 1 / alpha),
        start,
        bounds=(0, np.inf),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=10_000,
    )
    w = result.x
    assert np.linalg.norm(gram @ w - w ** (-1 / alpha)) <= 1e-9 * np.linalg.norm(w ** (-1 / alpha))
    return w


@functools.cache
def solved():
    """Property batches at α = 1 and α = 3, and random problems with random λ at every α in
    ALPHAS, in one compiled run."""
    rng = np.random.default_rng(0)
    at_one, at_three = property_batch(rng, 3, DIM), property_batch(rng, 3, DIM)
    # 2 × 9 + 12 problems: one bucket of `run`, shared with the other tests' compilation.
    random = batch_of(rng, 3 * len(ALPHAS), 3, DIM)
    random_alpha = np.repeat(ALPHAS, 3)
    n = len(at_one.names)
    grads = np.concatenate([at_one.grads, at_three.grads, random])
    alpha = np.concatenate([np.full(n, 1.0), np.full(n, 3.0), random_alpha])
    weights = np.concatenate([np.ones((2 * n, 3)), rng.uniform(0.5, 4, (len(random), 3))])
    updates, state = run(fairgrad, grads, hyper=hyper(alpha), task_weights=weights)
    coefficients = np.asarray(state.coefficients, np.float64)
    return at_one, at_three, n, grads, alpha, weights, updates, coefficients, state


def test_weights_match_the_official_least_squares():
    *_, n, grads, alpha, weights, updates, coefficients, state = solved()
    for i in range(2 * n, len(grads)):
        h = weights[i][:, None] * grads[i]
        cond = np.linalg.cond(h @ h.T)
        tol = max(2e-5, 8 * EPS32 * cond)
        w = official_weights(h, alpha[i])
        # coefficients = K w ⊙ λ on the raw gradients; the update is K Σ w_i h_i.
        assert rel_err(coefficients[i] / (3 * weights[i]), w) <= tol, (alpha[i], cond)
        assert rel_err(updates[i], 3 * w @ h) <= tol
        # The fairness condition itself: <h_i, Σ_j w_j h_j> = w_i^(−1/α).
        np.testing.assert_allclose(h @ (w @ h), w ** (-1 / alpha[i]), rtol=1e-8)
    residuals = np.asarray(state.method_state.residual)[2 * n :]
    assert np.all(residuals <= 1e-5)
    assert np.all(np.asarray(state.method_state.solver_iterations) <= 50)


def test_solver_meets_every_equation_across_alpha():
    # Ill-conditioned problems with α from 0.1 to 10, where some weights are ~1e-9 and SciPy's
    # least squares itself stalls: every equation of Gw = w^(−1/α) holds, checked in float64.
    rng = np.random.default_rng(1)
    grams, alphas = [], np.exp(rng.uniform(np.log(0.1), np.log(10.0), 32))
    for _ in range(32):
        h = rng.normal(size=(4, 32)) + rng.uniform(-0.5, 1.5) * rng.normal(size=32)
        h *= np.exp(rng.uniform(-2, 2, size=(4, 1)))
        grams.append(h @ h.T / np.trace(h @ h.T))
    solve = jax.jit(jax.vmap(solve_fairgrad, in_axes=(0, 0, 0, None)))
    solution = solve(jnp.asarray(grams, jnp.float32), jnp.ones((32, 4)), alphas, 50)
    for gram, alpha, w in zip(grams, alphas, np.asarray(solution.weights, np.float64), strict=True):
        target = w ** (-1 / alpha)
        assert np.linalg.norm(gram @ w - target) <= 1e-4 * np.linalg.norm(target), alpha
    assert np.all(np.asarray(solution.residual) <= 1e-4)


def test_orthogonal_gradients_closed_form():
    # Orthogonal gradients decouple: w_i = ‖h_i‖^(−2α/(α+1)), so the update along task i has
    # length K ‖h_i‖^((1−α)/(1+α)).
    norms = np.array([0.1, 1.0, 30.0])
    grads = np.zeros((len(ALPHAS), 3, DIM))
    grads[:, [0, 1, 2], [0, 1, 2]] = norms
    updates, _ = run(fairgrad, grads, hyper=hyper(ALPHAS))
    for update, a in zip(updates, ALPHAS, strict=True):
        np.testing.assert_allclose(update[:3], 3 * norms ** ((1 - a) / (1 + a)), rtol=1e-5)
        np.testing.assert_array_equal(update[3:], 0.0)


def test_properties_and_degenerate_inputs():
    at_one, at_three, n, grads, alpha, _, updates, coefficients, _ = solved()
    # The update scales as s^((1−α)/(1+α)): invariant at α = 1, s^(−1/2) at α = 3.
    check_properties(updates[:n], at_one, degree=0)
    check_properties(updates[n : 2 * n], at_three, degree=-0.5)
    for offset, batch, a in ((0, at_one, 1.0), (n, at_three, 3.0)):
        duplicate = coefficients[offset + batch.index("duplicate")]
        np.testing.assert_allclose(duplicate[0], duplicate[2], rtol=1e-5)
        # A zero task gets w = 0; the others solve their own problem.
        i = batch.index("one_zero")
        w = coefficients[offset + i] / 3
        assert w[2] == 0.0
        expected = official_weights(batch.grads[i][:2], a)
        assert rel_err(w[:2], expected) <= 1e-4


def test_no_solution_stays_finite():
    # Opposite gradients put 0 in the convex hull: no positive solution exists.
    grads = batch_of(np.random.default_rng(3), 4, 3, DIM)
    grads[:, 1] = -grads[:, 0]
    updates, state = run(fairgrad, grads, hyper=hyper(ALPHAS, [50, 1, 50, 1]))
    assert np.all(np.isfinite(updates))
    assert np.all(np.isfinite(np.asarray(state.coefficients)))


def test_bfloat16():
    check_bfloat16(fairgrad, batch_of(np.random.default_rng(4), 4, 3, DIM), hyper=hyper(2.0))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"alpha": 0.0}, ValueError, "`alpha`"),
        ({"alpha": -1.0}, ValueError, "`alpha`"),
        ({"alpha": float("inf")}, ValueError, "`alpha`"),
        ({"alpha": "1"}, TypeError, "`alpha`"),
        ({"solver_maxiter": 0}, ValueError, "`solver_maxiter`"),
        ({"solver_maxiter": 2.5}, ValueError, "`solver_maxiter`"),
        ({"task_weights": [1.0, 0.0]}, ValueError, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        fairgrad(**kwargs)
