"""Nash-MTL: the fixed point Gα = 1/α checked directly and against SciPy's root finder, clipping,
reuse of α between updates, and its properties."""

from __future__ import annotations

import functools

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

from camegrad_jax._nash_mtl import nash_mtl

DIM = 16
EPS32 = float(np.finfo(np.float32).eps)


def hyper(max_norm=0.0, update_weights_every=1, optim_niter=20):
    # Always the same traced hyper-parameters, so that every test shares one compilation.
    return {
        "max_norm": max_norm,
        "update_weights_every": np.asarray(update_weights_every, np.int32),
        "optim_niter": np.asarray(optim_niter, np.int32),
    }


def scipy_nash(h):
    """α > 0 with Gα = 1/α, by SciPy's root finder on x = log α (float64)."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    gram = h @ h.T
    start = -np.log(np.linalg.norm(h, axis=1))
    solution = scipy_optimize.root(lambda x: gram @ np.exp(x) - np.exp(-x), start, method="hybr")
    alpha = np.exp(solution.x)
    assert np.linalg.norm(gram @ alpha - 1 / alpha) <= 1e-10 * np.linalg.norm(1 / alpha)
    return alpha


@functools.cache
def three_tasks():
    rng = np.random.default_rng(0)
    properties = property_batch(rng, 3, DIM)
    random = batch_of(rng, 16, 3, DIM)
    n = len(properties.names)
    weights = np.concatenate([np.ones((n, 3)), rng.uniform(0.5, 4, (16, 3))])
    updates, state = run(
        nash_mtl, np.concatenate([properties.grads, random]), hyper=hyper(), task_weights=weights
    )
    alpha = np.asarray(state.coefficients, np.float64) / weights
    return properties, updates[:n], alpha[:n], random, weights[n:], updates[n:], alpha[n:], state


def test_fixed_point_matches_scipy_root():
    *_, random, weights, updates, alpha, state = three_tasks()
    for grads, w, update, a in zip(random, weights, updates, alpha, strict=True):
        h = w[:, None] * grads
        cond = np.linalg.cond(h @ h.T)
        # α_i <h_i, d> = 1 for every task, and ‖d‖² = K.
        np.testing.assert_allclose(a * (h @ update), 1.0, rtol=max(1e-5, 4 * EPS32 * cond))
        np.testing.assert_allclose(np.linalg.norm(update) ** 2, 3.0, rtol=1e-5)
        assert rel_err(a, scipy_nash(h)) <= max(1e-5, 4 * EPS32 * cond)
    assert np.all(np.asarray(state.method_state.solver_iterations) <= 20)
    assert np.all(np.asarray(state.method_state.residual)[-16:] <= 1e-5)


def test_properties_and_degenerate_inputs():
    properties, updates, alpha, *_ = three_tasks()
    # Scale-invariant (degree 0): ‖d‖² = K whatever the gradients' scale.
    check_properties(updates, properties, degree=0)
    duplicate = alpha[properties.index("duplicate")]
    np.testing.assert_allclose(duplicate[0], duplicate[2], rtol=1e-5)
    # A zero task gets α = 0; the others solve their own bargaining problem.
    i = properties.index("one_zero")
    assert alpha[i][2] == 0.0
    np.testing.assert_allclose(alpha[i][:2], scipy_nash(properties.grads[i][:2]), rtol=1e-4)


def test_max_norm_clips_the_update():
    grads = batch_of(np.random.default_rng(1), 5, 3, DIM)
    max_norms = np.array([0.0, 0.5, 1.0, 1.5, 10.0])
    updates, _ = run(nash_mtl, grads, hyper=hyper(max_norm=max_norms))
    expected = [np.sqrt(3), 0.5, 1.0, 1.5, np.sqrt(3)]  # ‖d‖ = √K before clipping
    np.testing.assert_allclose(np.linalg.norm(updates, axis=1), expected, rtol=1e-5)


def test_weights_are_reused_between_recomputations():
    rng = np.random.default_rng(2)
    steps = [batch_of(rng, 4, 3, DIM) for _ in range(3)]
    settings = hyper(update_weights_every=2)
    first, state = run(nash_mtl, steps[0], hyper=settings)
    alpha0 = np.asarray(state.method_state.weights, np.float64)
    second, state = run(nash_mtl, steps[1], hyper=settings, state=state)
    # Step 1 applies step 0's α to the new gradients.
    np.testing.assert_allclose(np.asarray(state.method_state.weights), alpha0, rtol=1e-6)
    for grads, a, update in zip(steps[1], alpha0, second, strict=True):
        assert rel_err(update, a @ grads) <= 1e-5
    third, state = run(nash_mtl, steps[2], hyper=settings, state=state)
    for grads, a, update in zip(
        steps[2], np.asarray(state.method_state.weights), third, strict=True
    ):
        np.testing.assert_allclose(a * (grads @ update), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(state.method_state.step), 3)


def test_no_solution_stays_finite():
    # Opposite gradients put 0 in the convex hull: Gα = 1/α has no solution. So does a single
    # Newton step from afar: the update stays finite either way.
    rng = np.random.default_rng(3)
    grads = batch_of(rng, 4, 3, DIM)
    grads[:2, 1] = -grads[:2, 0]
    updates, state = run(nash_mtl, grads, hyper=hyper(max_norm=1.0, optim_niter=[20, 1, 20, 1]))
    assert np.all(np.isfinite(updates))
    assert np.all(np.isfinite(np.asarray(state.coefficients)))
    assert np.all(np.linalg.norm(updates, axis=1) <= 1.0 + 1e-5)


def test_bfloat16():
    check_bfloat16(nash_mtl, batch_of(np.random.default_rng(4), 4, 3, DIM), hyper=hyper())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_norm": -1.0}, "`max_norm`"),
        ({"max_norm": float("nan")}, "`max_norm`"),
        ({"update_weights_every": 0}, "`update_weights_every`"),
        ({"update_weights_every": 1.5}, "`update_weights_every`"),
        ({"optim_niter": 0}, "`optim_niter`"),
        ({"task_weights": [1.0, -1.0]}, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nash_mtl(**kwargs)
