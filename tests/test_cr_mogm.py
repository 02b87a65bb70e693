"""CR-MOGM against a NumPy moving average of SciPy min-norm weights, torchjd's checks of
`CRMOGMWeighting` (alpha = 0 and 1, the recurrence), and its properties."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers.gradient_method_checks import check_properties, property_batch, run
from helpers.loss_testing import random_problem, rel_err, run_steps

from camegrad_jax._cr_mogm import cr_mogm

T, K, D = 6, 3, 8
# The runs over steps share one compilation: the loop-free solver (it compiles fastest; the
# jaxopt default runs in the property test and the interop suite) and MGDA's loss normalisation
# (the weights are found on g_i / L_i and weigh the g_i, as in the official code).
STATIC = {"solver": "enumerate", "solver_maxiter": 200, "normalization": "loss"}


def min_norm_weights(h):
    """MGDA's weights from SciPy's SLSQP on the simplex, in float64."""
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
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    return result.x


def reference(grads, values, alpha, task_weights):
    """λ_1 = λ̂_1, λ_t = α λ_{t−1} + (1 − α) λ̂_t, update Σ λ_t,i h_i with h_i = λ_i g_i and λ̂
    MGDA's weights of the normalised gradients h_i / (λ_i L_i)."""
    smoothed, updates, history = None, [], []
    for g, loss in zip(grads, values, strict=True):
        h = task_weights[:, None] * g
        fresh = min_norm_weights(g / loss[:, None])
        smoothed = fresh if smoothed is None else alpha * smoothed + (1 - alpha) * fresh
        updates.append(smoothed @ h)
        history.append(smoothed)
    return np.array(updates), np.array(history)


@pytest.mark.parametrize("seed", range(2))
def test_matches_reference_over_steps(seed):
    rng = np.random.default_rng(seed)
    grads, values = random_problem(rng, T, K, D)
    alpha, weights = rng.uniform(0.3, 0.95), rng.uniform(0.5, 2, K)
    updates, states, _ = run_steps(
        cr_mogm, grads, values, alpha=alpha, task_weights=weights, static=STATIC
    )
    expected, expected_weights = reference(grads, values, alpha, weights)
    assert rel_err(updates, expected) < 1e-4
    np.testing.assert_allclose(states.method_state.smoothed_weights, expected_weights, atol=1e-4)
    np.testing.assert_allclose(states.method_state.smoothed_weights.sum(1), 1.0, rtol=1e-6)


def test_alpha_zero_is_mgda_and_alpha_one_keeps_the_first_weights():
    # torchjd's `test_alpha_zero_reduces_to_bare_weighting` and `test_alpha_one_freezes_weights`
    # (here the first weights are MGDA's, not uniform: torchjd 0.17 starts from λ̂_1).
    rng = np.random.default_rng(2)
    grads, values = random_problem(rng, T, K, D)
    bare, states, _ = run_steps(cr_mogm, grads, values, alpha=0.0, static=STATIC)
    fresh = np.array([min_norm_weights(g / v[:, None]) for g, v in zip(grads, values, strict=True)])
    np.testing.assert_allclose(states.method_state.smoothed_weights, fresh, atol=1e-4)
    assert rel_err(bare, np.einsum("tk,tkd->td", fresh, grads)) < 1e-4
    _, frozen, _ = run_steps(cr_mogm, grads, values, alpha=1.0, static=STATIC)
    np.testing.assert_allclose(
        frozen.method_state.smoothed_weights, np.tile(fresh[0], (T, 1)), atol=1e-4
    )


def test_task_order_does_not_matter_over_steps():
    rng = np.random.default_rng(3)
    grads, values = random_problem(rng, T, K, D)
    order = np.array([1, 2, 0])
    base, _, _ = run_steps(cr_mogm, grads, values, alpha=0.7, static=STATIC)
    permuted, _, _ = run_steps(cr_mogm, grads[:, order], values[:, order], alpha=0.7, static=STATIC)
    assert rel_err(permuted, base) < 1e-5


def test_first_step_properties():
    # The first step is MGDA's: scale-equivariant, order-free, conflicting with no task. (The
    # default solver and no normalisation: "enumerate" returns zero weights where 0 is in the
    # convex hull.)
    batch = property_batch(np.random.default_rng(5), K, D)
    updates, state = run(cr_mogm, batch.grads, hyper={"alpha": 0.9})
    check_properties(updates, batch, non_conflicting=True)
    weights = np.asarray(state.method_state.smoothed_weights)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)


def test_a_non_finite_step_keeps_the_state():
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, T, K, D)
    grads[2, 1, 0] = np.nan
    updates, states, _ = run_steps(cr_mogm, grads, values, alpha=0.5, static=STATIC)
    assert np.all(np.isnan(updates[2])) and np.all(np.isfinite(np.delete(updates, 2, axis=0)))
    for leaf in jax.tree.leaves(states.method_state):
        np.testing.assert_array_equal(leaf[2], leaf[1])
    # The later steps go on from the state of step 2.
    kept = np.delete(np.arange(T), 2)
    expected, _ = reference(grads[kept], values[kept], 0.5, np.ones(K))
    assert rel_err(np.delete(updates, 2, axis=0), expected) < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 1.5}, ValueError, "alpha = 1.5"),
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"alpha": "0.9"}, TypeError, "alpha"),
        ({"normalization": "l1"}, ValueError, "normalization"),
        ({"solver": "newton"}, ValueError, "solver"),
        ({"solver_maxiter": 0}, ValueError, "solver_maxiter"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        cr_mogm(**kwargs)
